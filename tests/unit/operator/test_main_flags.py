"""Every operator setting is a flag, derived from the settings model (defined once)."""

from __future__ import annotations

import pytest

from factory_operator.main import FLAG_NAMES, build_parser, parse_args
from factory_operator.plan import OperatorSettings
from factory_operator.plan.settings import ENV_ONLY_SETTINGS


def test_every_setting_is_a_flag_with_its_description() -> None:
    actions = {a.dest: a for a in build_parser()._actions if a.dest != "help"}
    assert set(actions) == set(OperatorSettings.model_fields) - ENV_ONLY_SETTINGS
    for name, field in OperatorSettings.model_fields.items():
        if name in ENV_ONLY_SETTINGS:
            continue
        assert field.description and field.description in (actions[name].help or "")
        assert f"FACTORY_OPERATOR_{name.upper()}" in (actions[name].help or "")


def test_the_flags_of_before_keep_their_names() -> None:
    settings = parse_args(
        ["-n", "a", "--namespace", "b", "--api-timeout", "7", "--api-connect-timeout", "2",
         "--resync", "3", "--liveness", "", "--autoscale-interval", "4",
         "--metrics-port", "0", "--log-format", "plain", "--region", "eu-west-1"]
    )  # fmt: skip
    assert settings.namespaces == ["a", "b"]
    assert (settings.api_timeout_seconds, settings.api_connect_timeout_seconds) == (7.0, 2.0)
    assert (settings.resync_seconds, settings.autoscale_interval_seconds) == (3.0, 4.0)
    assert settings.liveness_endpoint is None
    assert (settings.metrics_port, settings.log_format, settings.region) == (
        0,
        "plain",
        "eu-west-1",
    )
    assert set(FLAG_NAMES) <= set(OperatorSettings.model_fields)


def test_settings_that_had_no_flag_have_one_now() -> None:
    settings = parse_args(
        ["--neuron-image", "inf2=registry/vllm-neuron:1", "--no-karpenter-do-not-disrupt",
         "--termination-grace-seconds", "300", "--shm-size", "16Gi"]
    )  # fmt: skip
    assert settings.neuron_images["inf2"] == "registry/vllm-neuron:1"
    assert settings.neuron_images["trn2"] == OperatorSettings().neuron_images["trn2"]
    assert not settings.karpenter_do_not_disrupt
    assert (settings.termination_grace_seconds, settings.shm_size) == (300, "16Gi")


def test_a_value_the_model_refuses_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--termination-grace-seconds", "5"])  # shorter than the preStop drain
    with pytest.raises(SystemExit):
        parse_args(["--log-format", "xml"])


def test_the_router_admin_key_is_never_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = {f for a in build_parser()._actions for f in a.option_strings}
    assert not any("key" in f for f in flags)
    with pytest.raises(SystemExit):
        parse_args(["--router-admin-key", "sk-secret"])
    monkeypatch.setenv("FACTORY_OPERATOR_ROUTER_ADMIN_KEY", "sk-secret")
    settings = parse_args(["--router-url", "http://router:8080", "--rollout-interval", "5"])
    assert settings.router_admin_key is not None
    assert settings.router_admin_key.get_secret_value() == "sk-secret"
    assert "sk-secret" not in repr(settings) and "sk-secret" not in str(settings)
    assert (settings.router_url, settings.rollout_interval_seconds) == ("http://router:8080", 5.0)
    monkeypatch.setenv("FACTORY_OPERATOR_ROUTER_ADMIN_KEY", "")
    assert parse_args(["--router-url", ""]).router_admin_key is None
    assert parse_args([]).router_url is None
