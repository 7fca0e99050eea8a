"""Checkpoints written in the background: what is written is the state at save(), in order, atomically,
and a failed write is raised, never lost."""

from __future__ import annotations

import pytest
import torch

from deepfake.errors import ConfigError
from deepfake.tracking.checkpoint_writer import CheckpointWriter


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "meta": {"epoch": 3, "tags": ["a"]}}


def _trained(steps: int = 1) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(steps):
        model(torch.randn(8, 64)).sum().backward()
        optimizer.step()
    return model, optimizer


@pytest.mark.parametrize("background", [True, False])
def test_the_file_holds_the_state_at_save_even_as_training_goes_on(tmp_path, background):
    model, optimizer = _trained()
    writer = CheckpointWriter(background=background)
    expected = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    moments = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    meta = {"epoch": 3, "tags": ["a"]}
    checkpoint = _state(model, optimizer)
    writer.save(checkpoint, tmp_path / "last.pth")
    checkpoint["meta"]["tags"].append("changed later")  # plain values are copied too
    for _ in range(3):  # the optimizer changes the live tensors in place while the file is written
        model(torch.randn(8, 64)).sum().backward()
        optimizer.step()
    writer.close()

    written = torch.load(tmp_path / "last.pth", weights_only=True)
    assert all(torch.equal(written["model"][name], tensor) for name, tensor in expected.items())
    assert not torch.equal(written["model"]["0.weight"], model.state_dict()["0.weight"])
    assert torch.equal(written["optimizer"]["state"][0]["exp_avg"], moments)
    assert written["meta"] == meta
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temp left behind


def test_saves_reuse_their_buffers_and_land_in_order(tmp_path, monkeypatch):
    import deepfake.tracking.checkpoint_writer as writer_module

    written = []  # (file, epoch) in the order the writer thread wrote them
    real_save = writer_module.atomic_save
    monkeypatch.setattr(writer_module, "atomic_save",
                        lambda obj, path: (real_save(obj, path), written.append((path.name, obj["epoch"]))))  # fmt: skip
    model, optimizer = _trained()
    writer = CheckpointWriter()
    for epoch in range(3):
        writer.save({"epoch": epoch, **_state(model, optimizer)}, tmp_path / "last.pth")
        writer.save({"epoch": epoch, "model": model.state_dict()}, tmp_path / "best.pth")
        optimizer.step()
    buffers = {key: tensor.data_ptr() for key, tensor in writer._buffers[tmp_path / "last.pth"].items()}
    writer.save({"epoch": 3, **_state(model, optimizer)}, tmp_path / "last.pth")
    assert {key: tensor.data_ptr() for key, tensor in writer._buffers[tmp_path / "last.pth"].items()} == buffers
    writer.wait()
    assert torch.load(tmp_path / "last.pth", weights_only=True)["epoch"] == 3
    assert torch.load(tmp_path / "best.pth", weights_only=True)["epoch"] == 2
    # One thread writes them in the order saved (best.pth of epoch N before a last.pth that names it best).
    assert written == [(name, epoch) for epoch in range(3) for name in ("last.pth", "best.pth")] + [("last.pth", 3)]
    writer.close()


def test_a_failed_write_is_raised_and_the_previous_file_kept(tmp_path):
    model, optimizer = _trained()
    writer = CheckpointWriter()
    writer.save(_state(model, optimizer), tmp_path / "last.pth")
    writer.wait()
    before = (tmp_path / "last.pth").read_bytes()
    (tmp_path / "blocker").write_text("a file where the run dir should be")
    writer.save(_state(model, optimizer), tmp_path / "blocker" / "last.pth")
    with pytest.raises(ConfigError, match="cannot make the folder"):
        writer.wait()
    writer.wait()  # raised once: nothing is pending any more
    assert (tmp_path / "last.pth").read_bytes() == before

    writer.save(_state(model, optimizer), tmp_path / "blocker" / "best.pth")
    writer.drain()  # while another error is on its way out: waits, raises nothing
    writer.wait()
    writer.close()

    # check() raises a write that has failed without waiting for the others (the trainer's poll).
    writer = CheckpointWriter()
    writer.save(_state(model, optimizer), tmp_path / "blocker" / "last.pth")
    writer._pending[tmp_path / "blocker" / "last.pth"].exception()  # let it fail first
    with pytest.raises(ConfigError, match="cannot make the folder"):
        writer.check()
    writer.check()  # raised once
    writer.close()


def test_after_a_failed_write_the_later_ones_are_not_written(tmp_path):
    """best.pth of epoch 2 failed: last.pth of epoch 2, which names epoch 2 the best, must not land
    either, as a synchronous save would have raised before writing it."""
    model, optimizer = _trained()
    writer = CheckpointWriter()
    writer.save({**_state(model, optimizer), "epoch": 1}, tmp_path / "last.pth")
    writer.wait()
    (tmp_path / "blocker").write_text("a file where best.pth's folder should be")
    writer.save({**_state(model, optimizer), "epoch": 2}, tmp_path / "blocker" / "best.pth")
    writer.save({**_state(model, optimizer), "epoch": 2}, tmp_path / "last.pth")

    with pytest.raises(ConfigError, match="blocker"):  # the first failure is the one raised
        writer.wait()
    assert torch.load(tmp_path / "last.pth", weights_only=True)["epoch"] == 1
    writer.close()
