"""`asyncrl local` honours configured metrics ports (`launch.local.plan_metrics`): a port set
in the config or an override is kept (generator k gets the configured port + k), one left at
its default becomes a free port, and only processes on configured ports linger after the
finish (nothing can be scraping a port picked at random)."""

from __future__ import annotations

from asyncrl.launch.config import load_config
from asyncrl.launch.local import plan_metrics


def test_configured_ports_are_kept_and_linger():
    cfg = load_config(
        None,
        [
            "learner.metrics_port=19400",
            "generator.metrics_port=19401",
            "learner.metrics_linger_seconds=7",
        ],
    )
    learner, gens, l_linger, g_linger = plan_metrics(cfg, 3)
    assert learner == 19400 and gens == [19401, 19402, 19403]
    # 7 as configured; the generator's default is 30.
    assert (l_linger, g_linger) == (7.0, 30.0)


def test_default_ports_are_free_ones_and_do_not_linger():
    cfg = load_config(None, [])
    assert "metrics_port" not in cfg.learner.model_fields_set
    learner, gens, l_linger, g_linger = plan_metrics(cfg, 2)
    assert learner != 9400 and 9401 not in gens and len(set(gens)) == 2
    assert (l_linger, g_linger) == (0.0, 0.0)
    # Configured as 0 ("any free port") is the same as not configured.
    cfg = load_config(None, ["generator.metrics_port=0", "learner.metrics_port=19400"])
    learner, gens, _, g_linger = plan_metrics(cfg, 1)
    assert learner == 19400 and gens[0] != 0 and g_linger == 0.0
