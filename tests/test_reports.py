from fedge.coordinator.reports import RunDirectory


def _run_dir(tmp_path) -> RunDirectory:
    run = RunDirectory(tmp_path / "run")
    for round_number, accuracy in enumerate([0.1, 0.3, 0.4]):
        run.append_round({"round": round_number, "accuracy": accuracy, "loss": 1.0, "bytes_up": {"a": 1e5}, "bytes_down": {"a": 2e5}})
    return run


def test_plot_draws_baselines_next_to_the_federated_curve(tmp_path):
    run = _run_dir(tmp_path)
    plain = run.plot().read_bytes()
    with_baseline = run.plot({"centralised LoRA (pooled data)": [0.1, 0.5, 0.6]}).read_bytes()
    assert plain.startswith(b"\x89PNG") and with_baseline.startswith(b"\x89PNG")
    assert with_baseline != plain


def test_pending_records_are_read_in_round_order_past_stray_files(tmp_path):
    """A record written but not yet in metrics.jsonl is found on resume; a half-written file an older version left
    behind (``round_004.partial.json``) is no record and stops nothing."""
    run = _run_dir(tmp_path)
    (run.path / "globals").mkdir(parents=True, exist_ok=True)
    run.save_pending_record(5, {"round": 5})
    run.save_pending_record(3, {"round": 3})
    run.save_pending_record(2, {"round": 2})  # already in metrics.jsonl
    (run.path / "globals" / "round_004.partial.json").write_text("{")
    assert run.pending_records() == [(3, {"round": 3}), (5, {"round": 5})]
    run.drop_pending_record(3)
    assert run.pending_records() == [(5, {"round": 5})]
