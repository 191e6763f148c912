"""Where settings come from: priority, the strict file, secret files, owned Kafka properties,
unknown variables, libpq defaults, client ids and the liveness bound (worker.settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.adapters.kafka import KafkaConfig
from worker.errors import ConfigError
from worker.runtime.compose import default_client_id, kafka_config, pg_config
from worker.settings import Settings, load_settings, setting_variables, unknown_setting_variables
from worker.settings_sources import KAFKA_OWNED_PROPERTIES, expand_secret_files


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sr.toml"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- priority
def test_explicit_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    config = _toml(tmp_path, 'group_id = "from-file"\nbatch_size = 7\ns3_bucket = "file-bucket"\n')
    env = {"SR_GROUP_ID": "from-env", "SR_BATCH_SIZE": "9"}
    settings = load_settings(config, env, group_id="explicit")
    assert settings.group_id == "explicit"  # explicit > env
    assert settings.batch_size == 9  # env > file
    assert settings.s3_bucket == "file-bucket"  # file > default
    assert settings.poll_timeout == Settings.model_fields["poll_timeout"].default  # default


def test_nested_topics_merge_across_file_and_environment(tmp_path: Path) -> None:
    config = _toml(tmp_path, '[topics]\nready = "file.ready"\ndlq = "file.dlq"\n')
    settings = load_settings(config, {"SR_TOPICS__DLQ": "env.dlq"})
    assert (settings.topics.ready, settings.topics.dlq, settings.topics.intents) == \
        ("file.ready", "env.dlq", "sr.run-intents")


def test_the_environment_given_is_the_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # load_settings reads the mapping it is given, not os.environ behind its back.
    monkeypatch.setenv("SR_GROUP_ID", "from-os-environ")
    assert load_settings(None, {}).group_id == "sr-worker"
    assert load_settings(None, {"SR_GROUP_ID": "given"}).group_id == "given"


def test_a_field_with_an_alias_is_settable_by_name_in_the_file(tmp_path: Path) -> None:
    config = _toml(tmp_path, 'aws_access_key_id = "AKIAFILE"\naws_secret_access_key = "x"\ns3_region = "eu-west-1"\n')
    settings = load_settings(config, {})
    assert settings.aws_access_key_id is not None and settings.s3_region == "eu-west-1"


# ----------------------------------------------------------------------------- strict file
def test_a_typo_in_the_file_is_refused_with_a_hint(tmp_path: Path) -> None:
    config = _toml(tmp_path, 'pg_dns = "postgresql://u:hunter2@db/sr"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(config, {})
    message = str(err.value)
    assert "'pg_dns'" in message and "did you mean 'pg_dsn'" in message
    assert "hunter2" not in message  # the value is never repeated


def test_an_unknown_nested_key_is_refused(tmp_path: Path) -> None:
    config = _toml(tmp_path, '[topics]\nredy = "x"\n')
    with pytest.raises(ConfigError, match=r"topics\.redy"):
        load_settings(config, {})


def test_an_unparseable_or_missing_file_is_one_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(_toml(tmp_path, "group_id = \n"), {})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.toml", {})


def test_the_example_config_file_loads(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "docs" / "sr.example.toml"
    settings = load_settings(example, {})
    assert (settings.group_id, settings.s3_bucket, settings.http_port) == ("sr-worker", "sr-evidence", 8080)
    assert settings.kafka_client_config()["security.protocol"] == "SASL_SSL"


# ----------------------------------------------------------------------------- secret files
def test_a_secret_file_sets_its_variable(tmp_path: Path) -> None:
    secret = tmp_path / "dsn"
    secret.write_text("postgresql://sr:hunter2@db:5432/sr\n")
    pw = tmp_path / "kafka-password"
    pw.write_text("s3cr3t")
    settings = load_settings(None, {"SR_PG_DSN_FILE": str(secret), "SR_KAFKA_SASL_PASSWORD_FILE": str(pw)})
    assert settings.pg_conninfo().get_secret_value() == "postgresql://sr:hunter2@db:5432/sr"  # one newline gone
    assert settings.kafka_client_config()["sasl.password"] == "s3cr3t"


def test_a_secret_file_and_its_variable_together_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "dsn"
    secret.write_text("x")
    with pytest.raises(ConfigError, match="both SR_PG_DSN and SR_PG_DSN_FILE"):
        load_settings(None, {"SR_PG_DSN": "y", "SR_PG_DSN_FILE": str(secret)})


def test_an_unreadable_or_oversized_secret_file_is_one_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SR_PG_DSN_FILE: cannot read"):
        expand_secret_files({"SR_PG_DSN_FILE": str(tmp_path / "absent")})
    big = tmp_path / "big"
    big.write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(ConfigError, match="larger than"):
        expand_secret_files({"SR_PG_DSN_FILE": str(big)})
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        expand_secret_files({"SR_PG_DSN_FILE": str(binary)})


def test_a_setting_whose_name_ends_in_file_is_not_a_secret_file(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("not read by the settings")
    settings = load_settings(None, {"SR_POLICY_FILE": str(policy)})
    assert settings.policy_file == policy


def test_other_variables_are_not_treated_as_secret_files() -> None:
    env = {"AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token", "SR_FILE": "x", "PATH": "/bin"}
    assert expand_secret_files(env) == env


# ----------------------------------------------------------------------------- owned Kafka properties
@pytest.mark.parametrize("variable", ["SR_KAFKA_ENABLE_IDEMPOTENCE", "SR_KAFKA_ENABLE_AUTO_COMMIT",
                                      "SR_KAFKA_ISOLATION_LEVEL", "SR_KAFKA_GROUP_ID", "SR_KAFKA_ACKS",
                                      "SR_KAFKA_PARTITION_ASSIGNMENT_STRATEGY"])
def test_an_override_of_a_property_sr_owns_is_refused_in_one_line(variable: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, {variable: "false"})
    message = str(err.value)
    assert variable in message and "cannot be overridden" in message and "\n" not in message


def test_owned_properties_are_refused_from_the_file_and_explicit_too(tmp_path: Path) -> None:
    config = _toml(tmp_path, '[kafka_extra]\n"enable.auto.commit" = "true"\n')
    with pytest.raises(ConfigError, match=r"enable\.auto\.commit"):
        load_settings(config, {})
    with pytest.raises(ConfigError, match=r"enable\.idempotence"):
        load_settings(None, {}, kafka_extra={"enable.idempotence": "false"})


def test_security_properties_still_pass_through() -> None:
    env = {"SR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "SR_KAFKA_BOOTSTRAP": "b:9093", "SR_KAFKA_DEBUG": "cgrp"}
    settings = load_settings(None, env)
    assert settings.kafka_client_config() == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                                              "debug": "cgrp"}
    assert settings.kafka_bootstrap == "b:9093"


def test_every_owned_property_is_one_the_clients_set_or_a_setting_replaces() -> None:
    # The list is the contract of what SR guarantees; each entry says why.
    assert all(reason for reason in KAFKA_OWNED_PROPERTIES.values())
    assert {"enable.idempotence", "enable.auto.commit", "enable.auto.offset.store", "isolation.level"} \
        <= set(KAFKA_OWNED_PROPERTIES)


# ----------------------------------------------------------------------------- unknown variables
def test_unknown_sr_variables_are_reported_with_hints() -> None:
    env = {"SR_PG_DNS": "x", "SR_GROUP_ID": "g", "SR_TOPICS__READY": "r", "SR_KAFKA_SASL_USERNAME": "u",
           "SR_PG_DSN_FILE": "/f", "SR_CONFIG": "c.toml", "SR_SIGNING_KEY": "k", "SR_ZZZZZZ_QQQ": "1", "HOME": "/root"}
    assert unknown_setting_variables(env) == ["SR_PG_DNS (did you mean SR_PG_DSN?)", "SR_ZZZZZZ_QQQ"]


def test_every_setting_has_its_variable() -> None:
    names = setting_variables()
    assert "SR_PG_DSN" in names and "AWS_ACCESS_KEY_ID" in names and "SR_LIVENESS_TIMEOUT" in names


# ----------------------------------------------------------------------------- defaults that defer
def test_no_dsn_means_libpq_defaults() -> None:
    settings = load_settings(None, {})
    assert settings.pg_dsn is None
    assert pg_config(settings).dsn.get_secret_value() == ""  # PGHOST, PGUSER, PGSERVICE, ~/.pgpass apply


def test_client_id_and_static_membership_reach_the_kafka_config() -> None:
    config = kafka_config(load_settings(None, {}))
    assert config.client_id == default_client_id() and config.client_id.startswith("sr-")
    assert config.group_instance_id is None
    chosen = kafka_config(load_settings(None, {"SR_CLIENT_ID": "sr-prod-a", "SR_GROUP_INSTANCE_ID": "sr-0"}))
    assert (chosen.client_id, chosen.group_instance_id) == ("sr-prod-a", "sr-0")
    base = KafkaConfig(bootstrap="b:1", client_id="sr-x").base()
    assert base["client.id"] == "sr-x" and base["logger"].name == "sr.librdkafka"


def test_log_settings_are_validated() -> None:
    settings = load_settings(None, {"SR_LOG_LEVEL": "debug", "SR_LOG_FORMAT": "text"})
    assert (settings.log_level, settings.log_format) == ("DEBUG", "text")
    with pytest.raises(ConfigError, match="log_format"):
        load_settings(None, {"SR_LOG_FORMAT": "xml"})


def test_liveness_must_outlast_a_revoke_drain() -> None:
    with pytest.raises(ConfigError, match="SR_LIVENESS_TIMEOUT must exceed"):
        load_settings(None, {"SR_LIVENESS_TIMEOUT": "5", "SR_REVOKE_DRAIN_TIMEOUT": "10"})
    assert load_settings(None, {"SR_LIVENESS_TIMEOUT": "12", "SR_REVOKE_DRAIN_TIMEOUT": "5"}).liveness_timeout == 12


def test_the_intake_consumer_rebalances_incrementally_and_can_be_a_static_member(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.adapters.kafka import consumer as consumer_module

    seen: list[dict[str, object]] = []

    class FakeConsumer:
        def __init__(self, conf: dict[str, object]) -> None:
            seen.append(conf)

        def subscribe(self, topics: list[str], **callbacks: object) -> None:
            pass

        def close(self) -> None:
            pass

    monkeypatch.setattr(consumer_module, "Consumer", FakeConsumer)
    for instance in (None, "sr-0"):
        config = KafkaConfig(bootstrap="b:1", client_id="sr-test", group_instance_id=instance)
        intake = consumer_module.IntakeConsumer(config, group_id="g", topics=["t"])
        intake.__enter__()
        intake._consumer = None  # nothing to close: the fake never connected
    dynamic, static = seen
    assert dynamic["partition.assignment.strategy"] == "cooperative-sticky"
    assert "group.instance.id" not in dynamic and static["group.instance.id"] == "sr-0"
    assert dynamic["client.id"] == "sr-test" and dynamic["enable.auto.commit"] is False


def test_an_aliased_variable_beats_the_same_setting_in_the_file(tmp_path: Path) -> None:
    # The environment names these AWS_*; the file names them by setting: one value, env first.
    config = _toml(tmp_path, 'aws_access_key_id = "A"\naws_secret_access_key = "B"\ns3_region = "eu-west-1"\n')
    env = {"AWS_ACCESS_KEY_ID": "X", "AWS_SECRET_ACCESS_KEY": "Y", "AWS_REGION": "us-west-2"}
    settings = load_settings(config, env)
    assert settings.aws_access_key_id is not None and settings.aws_access_key_id.get_secret_value() == "X"
    assert settings.s3_region == "us-west-2"
    assert load_settings(config, {}).s3_region == "eu-west-1"
