"""The bench harness end to end in --quick mode: a real dev server, both sides, real runs.

It checks the report's shape and arithmetic only. Timing targets are the bench's business,
not a test's: this machine is shared, so a verdict here would say more about the load than
about Fireline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scale import QUICK_SIZES

ROOT = Path(__file__).resolve().parent.parent
METRICS = {
    "per_step_noop",
    "per_step_checks",
    "start_to_first_step",
    "signal_to_next_step",
    "saga_compensation",
    "concurrent_runs",
    "alert_to_first_step",
}
SCALE = {
    "bulk_approvals_rate",
    "bulk_approvals_p95",
    "bulk_approvals_p50",
    "timers_all_paged",
    "timers_worst_lateness",
    "waiting_worker_rss",
    "waiting_server_rss",
    "waiting_all_held",
    "storm_all_first_steps",
    "storm_open_rate",
}


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """One ``python -m bench --quick --json`` run: (what it printed, what it wrote)."""
    out = tmp_path_factory.mktemp("bench") / "latest.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout), json.loads(out.read_text())


class TestBenchQuick:
    @pytest.mark.timeout(300)
    def test_every_metric_has_positive_figures_for_both_sides(self, quick_report):
        """Each figure has positive fireline and raw samples, one per repeat."""
        printed, _ = quick_report
        assert set(printed["metrics"]) == METRICS
        for name, metric in printed["metrics"].items():
            for side in ("fireline", "raw"):
                samples = metric[side]["samples_ms"]
                assert len(samples) == printed["repeat"] == 2, name
                assert all(s > 0 for s in samples), (name, side, samples)
                assert metric[side]["p50_ms"] > 0
            if name not in ("start_to_first_step", "signal_to_next_step", "alert_to_first_step"):
                assert all(s > 0 for s in metric["cpu"]["fireline"]["samples_ms"]), name
                assert all(s > 0 for s in metric["cpu"]["raw"]["samples_ms"]), name

    @pytest.mark.timeout(300)
    def test_ratios_and_verdicts_follow_from_the_medians(self, quick_report):
        """ratio = fireline p50 / raw p50, delta = their difference, verdict from the target."""
        printed, _ = quick_report
        for name, metric in printed["metrics"].items():
            fl, raw = metric["fireline"]["p50_ms"], metric["raw"]["p50_ms"]
            assert metric["ratio"] == pytest.approx(fl / raw), name
            assert metric["delta_ms"] == pytest.approx(fl - raw), name
            target = metric["target"]
            if target["kind"] == "none":
                assert metric["verdict"] == "n/a"
            else:
                value = metric["ratio"] if target["kind"] == "ratio" else metric["delta_ms"]
                assert metric["verdict"] == ("meets" if value <= target["limit"] else "misses")
        limits = {n: m["target"]["limit"] for n, m in printed["metrics"].items()}
        assert limits["per_step_noop"] == 1.1
        assert limits["signal_to_next_step"] == 10
        assert limits["alert_to_first_step"] == 15

    @pytest.mark.timeout(300)
    def test_every_scale_scenario_finished_on_both_sides(self, quick_report):
        """Incidents and bulk approvals: every figure measured (none reported as not finished),
        positive on both sides, and its ratio and verdict follow from the two values."""
        printed, _ = quick_report
        scale = {s["name"]: s for s in printed["scale"]}
        assert set(scale) == SCALE, [s.get("note") for s in printed["scale"]]
        for name, figure in scale.items():
            if name == "timers_worst_lateness":
                # Measured from the first page's arrival, while the rung's clock starts when
                # it was sent: a rung on time can read a few ms early, never a delay early.
                delay_ms = QUICK_SIZES.timer_delay_s * 1000
                assert -0.1 * delay_ms < figure["fireline"] < delay_ms, name
                assert -0.1 * delay_ms < figure["raw"] < delay_ms, name
                continue
            assert figure["fireline"] > 0, name
            if name == "waiting_all_held":
                assert figure["raw"] is None
                continue
            assert figure["raw"] > 0, name
            assert figure["ratio"] == pytest.approx(figure["fireline"] / figure["raw"]), name
            if figure["target"]["kind"] == "ratio":
                meets = figure["ratio"] <= figure["target"]["limit"]
                assert figure["verdict"] == ("meets" if meets else "misses"), name
        assert scale["storm_all_first_steps"]["target"]["limit"] == 1.2
        assert scale["timers_all_paged"]["target"]["limit"] == 1.2
        assert printed["worker_tuning"] == "tuned"

    @pytest.mark.timeout(300)
    def test_report_names_the_server_and_is_written_to_the_output_file(self, quick_report):
        """The JSON names the tuned SQLite profile it measured and equals the file written."""
        printed, written = quick_report
        assert printed == written
        server = printed["server"]
        assert (server["profile"], server["db"]) == ("tuned", "sqlite")
        assert "history.transferProcessorMaxPollRPS=1000" in server["flags"]
        assert "journal_mode=wal" in server["flags"]
        assert server["server_version"].startswith("temporal version")
        assert server["cpus"] >= 1
        assert (printed["steps"], printed["concurrent"], printed["quick"]) == (5, 20, True)

    @pytest.mark.timeout(300)
    def test_history_counts_show_the_same_round_trips_on_both_sides(self, quick_report):
        """Each scenario's last run was read back; checks add markers, not workflow tasks."""
        printed, _ = quick_report
        history = {h["scenario"]: h for h in printed["history"]}
        assert set(history) == {"no-op steps", "checked steps", "approval gate", "saga of 10"}
        noop, checked = history["no-op steps"], history["checked steps"]
        # One workflow task to start plus one per completed activity, on either side.
        assert noop["raw_workflow_tasks"] == noop["steps"] + 1
        assert noop["fireline_workflow_tasks"] == noop["raw_workflow_tasks"]
        assert checked["fireline_workflow_tasks"] == checked["raw_workflow_tasks"]
        # A pre- and a postcondition per step: two local-activity markers each.
        assert checked["fireline_by_type"]["MARKER_RECORDED"] == 2 * checked["steps"]
        assert "MARKER_RECORDED" not in checked["raw_by_type"]
        saga = history["saga of 10"]
        assert saga["fireline_by_type"]["ACTIVITY_TASK_COMPLETED"] == 9 + 9  # 9 forward, 9 undo
        assert saga["raw_by_type"]["ACTIVITY_TASK_COMPLETED"] == 9 + 9
        assert saga["fireline_by_type"]["ACTIVITY_TASK_FAILED"] == 1
