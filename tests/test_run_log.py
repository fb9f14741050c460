"""metrics.jsonl handling on resume and the progress-line helpers."""
import json

from mim_jax.train import run_log


def test_truncate_metrics_keeps_steps_up_to_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 11)))
    run_log.truncate_metrics(str(path), 6)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    run_log.truncate_metrics(str(tmp_path / "missing.jsonl"), 3)  # no file: nothing to do, no error


def test_truncate_metrics_drops_a_line_cut_short_by_a_kill(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 0.5}) + "\n" for s in range(1, 4)) + '{"step": 4, "lo')
    run_log.truncate_metrics(str(path), 5)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_format_duration():
    assert run_log.format_duration(5) == "5s"
    assert run_log.format_duration(125) == "2m05s"
    assert run_log.format_duration(12345) == "3h25m45s"


def test_write_rows(tmp_path):
    log = run_log.RunLog(str(tmp_path), total_steps=10, global_batch_size=8, start_step=0, tensorboard=False)
    row = log.write(2, {"loss": 0.5, "lr": 1e-3})
    assert row["step"] == 2 and row["img_per_sec"] == row["steps_per_sec"] * 8
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 0.5


def test_mfu_is_model_flops_rate_over_total_peak(tmp_path, capsys):
    log = run_log.RunLog(str(tmp_path), total_steps=10, global_batch_size=8, start_step=0, tensorboard=False,
                         flops_per_step=2e12, peak_flops=8e12)
    row = log.write(1, {"loss": 0.5, "lr": 1e-3})
    assert abs(row["mfu"] - 2e12 * row["steps_per_sec"] / 8e12) < 1e-12
    assert "MFU" in capsys.readouterr().out
    no_peak = run_log.RunLog(str(tmp_path), total_steps=10, global_batch_size=8, start_step=0,
                             tensorboard=False, flops_per_step=2e12, peak_flops=None)
    assert "mfu" not in no_peak.write(1, {"loss": 0.5, "lr": 1e-3})
