"""Guard settings from the environment."""

from pathlib import Path

import pytest

from modelcourt.guard import GuardConfig, GuardConfigError

HEX_KEY = "ab" * 32
BASE = {
    "MODELCOURT_GUARD_KEY": HEX_KEY,
    "MODELCOURT_GUARD_MODEL": "5f0c7a52-4c55-4d4e-9a55-2b1e1f4c1d10",
    "MODELCOURT_GUARD_CLASSES": "10",
    "MODELCOURT_GUARD_JOURNAL": "/var/lib/guard",
}


def test_settings_come_from_the_environment() -> None:
    environ = {
        **BASE,
        "MODELCOURT_URL": "https://court.example.org",
        "MODELCOURT_TOKEN": "tok",
        "MODELCOURT_GUARD_RATE": "0.01",
        "MODELCOURT_GUARD_BATCH": "20",
        "MODELCOURT_GUARD_BATCH_SECONDS": "60",
        "MODELCOURT_GUARD_PRADA_THRESHOLD": "0.85",
        "MODELCOURT_GUARD_PRADA_WINDOW": "200",
        "MODELCOURT_GUARD_PRADA_EVERY": "5",
        "MODELCOURT_GUARD_CLIENT_HEADER": "1",
        "MODELCOURT_GUARD_INPUT_SHAPE": "1,8,8",
        "MODELCOURT_GUARD_MAX_CONNECTIONS": "32",
    }
    config = GuardConfig.from_env(environ)
    assert config.key == bytes.fromhex(HEX_KEY)
    assert (config.model_id, config.num_classes, config.journal_dir) == (
        BASE["MODELCOURT_GUARD_MODEL"],
        10,
        Path("/var/lib/guard"),
    )
    assert (config.service_url, config.token) == ("https://court.example.org", "tok")
    assert (config.rate, config.batch_size, config.batch_seconds) == (0.01, 20, 60.0)
    assert (config.prada_threshold, config.prada_window, config.prada_min_distances) == (0.85, 200, 200)
    assert config.prada_every == 5
    assert config.trust_client_header
    assert config.input_shape == (1, 8, 8)
    assert config.max_connections == 32


def test_defaults_follow_the_contract() -> None:
    config = GuardConfig.from_env(BASE)
    assert (config.rate, config.batch_size, config.batch_seconds) == (0.005, 50, 300.0)
    assert (config.prada_threshold, config.prada_window, config.prada_min_distances) == (0.90, 100, 100)
    assert config.prada_every == 10
    assert not config.trust_client_header
    assert config.max_connections == 256


def test_flags_override_the_environment() -> None:
    config = GuardConfig.from_env(BASE, num_classes=3, model_id="other", journal_dir=None)
    assert (config.num_classes, config.model_id) == (3, "other")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"MODELCOURT_GUARD_KEY": "ab" * 31}, "at least 32 bytes"),
        ({"MODELCOURT_GUARD_KEY": "zz" * 32}, "must be hex"),
        ({"MODELCOURT_GUARD_KEY": ""}, "not set"),
        ({"MODELCOURT_GUARD_CLASSES": ""}, "number of classes"),
        ({"MODELCOURT_GUARD_CLASSES": "1"}, "at least 2 classes"),
        ({"MODELCOURT_GUARD_JOURNAL": ""}, "journal"),
        ({"MODELCOURT_GUARD_MODEL": ""}, "MODELCOURT_GUARD_MODEL"),
        ({"MODELCOURT_GUARD_MODEL": "../x"}, "MODELCOURT_GUARD_MODEL"),
        ({"MODELCOURT_GUARD_RATE": "2"}, "between 0 and 1"),
        ({"MODELCOURT_GUARD_RATE": "nan"}, "finite"),
        ({"MODELCOURT_GUARD_BATCH": "ten"}, "an integer"),
        ({"MODELCOURT_GUARD_BATCH": "0"}, "at least 1"),
        ({"MODELCOURT_GUARD_PRADA_THRESHOLD": "1.5"}, "between 0 and 1"),
        ({"MODELCOURT_GUARD_PRADA_EVERY": "0"}, "PRADA_EVERY is at least 1"),
        ({"MODELCOURT_GUARD_PRADA_EVERY": "often"}, "an integer"),
        ({"MODELCOURT_GUARD_PRADA_MIN": "101"}, "at most the window"),
        ({"MODELCOURT_GUARD_CLIENT_HEADER": "maybe"}, "1 or 0"),
        ({"MODELCOURT_URL": "ftp://x"}, "http"),
        ({"MODELCOURT_GUARD_INPUT_SHAPE": "1,x"}, "integers"),
        ({"MODELCOURT_GUARD_MAX_CONNECTIONS": "0"}, "MAX_CONNECTIONS is at least 1"),
    ],
)
def test_bad_settings_are_refused_with_a_sentence(change: dict[str, str], message: str) -> None:
    with pytest.raises(GuardConfigError, match=message) as refused:
        GuardConfig.from_env({**BASE, **change})
    assert HEX_KEY not in str(refused.value)


def test_by_default_only_full_windows_are_judged() -> None:
    assert GuardConfig.from_env({**BASE, "MODELCOURT_GUARD_PRADA_WINDOW": "20"}).prada_min_distances == 20
    assert GuardConfig.from_env({**BASE, "MODELCOURT_GUARD_PRADA_WINDOW": "300"}).prada_min_distances == 300
    explicit = {**BASE, "MODELCOURT_GUARD_PRADA_WINDOW": "300", "MODELCOURT_GUARD_PRADA_MIN": "50"}
    assert GuardConfig.from_env(explicit).prada_min_distances == 50


def test_secrets_stay_out_of_repr() -> None:
    config = GuardConfig.from_env({**BASE, "MODELCOURT_TOKEN": "very-secret-token"})
    assert "very-secret-token" not in repr(config)
    assert HEX_KEY not in repr(config)
    assert repr(config.key) not in repr(config)
