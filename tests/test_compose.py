"""The container setup: docker-compose.yml, the Dockerfile and .dockerignore agree with the real CLI.

No Docker and no broker needed: these tests read the files and parse each compose command with the
CLI's own argparse parser (simulator.cli.build_parser).
"""
from __future__ import annotations

import json
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKERS = ("bureau", "accounts", "pos")


@pytest.fixture(scope="module")
def compose() -> dict:
    with open(REPO / "docker-compose.yml", encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def depends_of(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):  # short form means service_started
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_services_exist(services: dict) -> None:
    assert {"rabbitmq", *WORKERS, "scenario"} <= set(services)


def test_rabbitmq_service(services: dict) -> None:
    rabbit = services["rabbitmq"]
    # A pinned, supported 4.x management image (3.13 is out of community support).
    image, _, tag = rabbit["image"].partition(":")
    assert image == "rabbitmq" and tag.endswith("-management")
    major, minor = (int(x) for x in tag.removesuffix("-management").split(".")[:2])
    assert (major, minor) >= (4, 1), tag
    test = rabbit["healthcheck"]["test"]
    test = " ".join(test) if isinstance(test, list) else test
    assert "rabbitmq-diagnostics" in test and "ping" in test
    published = {str(p).split(":")[-1] for p in rabbit.get("ports", [])}
    assert {"5672", "15672"} <= published


@pytest.mark.parametrize("name", WORKERS)
def test_worker_command(services: dict, name: str) -> None:
    assert services[name]["command"] == ["worker", name]


def test_scenario_runs_the_main_job_like_gongji_up(services: dict) -> None:
    from simulator.cli import MAIN_JOB
    cmd = list(services["scenario"]["command"])
    # The same scenario run as `gongji up` (which writes to ./reports; the container writes to the bind mount).
    assert cmd[:3] == list(MAIN_JOB[:3]) and "--external" in cmd
    assert cmd[cmd.index("--report-dir") + 1] == "/reports"
    assert "./reports:/reports" in [str(v) for v in services["scenario"].get("volumes", [])]
    assert (REPO / cmd[1]).exists(), "the scenario it runs must ship in the image"


def all_commands(services: dict) -> list[tuple[str, list[str]]]:
    out = []
    for name, svc in services.items():
        if "build" not in svc:  # third-party images (rabbitmq) run their own commands
            continue
        cmd = svc.get("command")
        out.append((name, shlex.split(cmd) if isinstance(cmd, str) else list(cmd or [])))
    return out


def test_every_command_parses_with_the_real_cli(services: dict) -> None:
    from simulator.cli import build_parser  # the real CLI, not a copy of its grammar

    commands = all_commands(services)
    assert {name for name, _ in commands} >= {*WORKERS, "scenario"}
    for name, command in commands:
        parser = build_parser()
        try:
            parser.parse_args(command)
        except SystemExit as exc:  # argparse reports errors by exiting
            pytest.fail(f"service {name}: `gongji {' '.join(command)}` is rejected by the CLI (exit {exc.code})")


def test_cli_rejects_an_unknown_worker_role() -> None:
    """Guards the test above: a parser that accepted anything would prove nothing."""
    from simulator.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "no-such-role"])


@pytest.mark.parametrize("name", (*WORKERS, "scenario"))
def test_amqp_url_points_at_the_rabbitmq_service(services: dict, name: str) -> None:
    url = urlsplit(env_of(services[name])["AMQP_URL"])
    assert url.scheme == "amqp"
    assert url.hostname == "rabbitmq" and url.hostname in services
    assert (url.port or 5672) == 5672
    # Each service as its own broker user, with the documented local password of the definitions file.
    from services.shared.definitions import LOCAL_PASSWORDS
    user = "simulator" if name == "scenario" else name
    assert (url.username, url.password) == (user, LOCAL_PASSWORDS[user])
    assert env_of(services[name])["GONGJI_DECLARE"] == "passive"


def test_broker_loads_the_definitions_file(services: dict) -> None:
    mounts = [str(v) for v in services["rabbitmq"].get("volumes", [])]
    assert "./deploy/rabbitmq/definitions.json:/etc/rabbitmq/definitions.json:ro" in mounts
    conf = [m for m in mounts if m.startswith("./deploy/rabbitmq/rabbitmq.conf:")]
    assert conf and conf[0].split(":")[1].startswith("/etc/rabbitmq/conf.d/")
    assert "load_definitions = /etc/rabbitmq/definitions.json" in (REPO / "deploy/rabbitmq/rabbitmq.conf").read_text()


@pytest.mark.parametrize("name", WORKERS)
def test_worker_runtime(compose: dict, services: dict, name: str) -> None:
    svc = services[name]
    assert env_of(svc)["GONGJI_DATA_DIR"] == "/data"
    assert depends_of(svc).get("rabbitmq") == "service_healthy"
    assert svc.get("restart") == "unless-stopped"
    mounts = [str(v) for v in svc.get("volumes", [])]
    named = [m.split(":")[0] for m in mounts if m.split(":")[1:2] == ["/data"]]
    assert len(named) == 1, mounts
    assert named[0] in (compose.get("volumes") or {}), "the /data volume must be a declared named volume"


def test_each_worker_has_its_own_volume(services: dict) -> None:
    sources = [str(v).split(":")[0] for name in WORKERS for v in services[name].get("volumes", [])]
    assert len(sources) == len(set(sources)) == len(WORKERS)


def test_scenario_waits_for_healthy_workers_and_runs_once(services: dict) -> None:
    job = services["scenario"]
    deps = depends_of(job)
    assert deps.get("rabbitmq") == "service_healthy"
    for name in WORKERS:
        assert deps.get(name) == "service_healthy", name  # consuming, not merely started
    # YAML 1.1 reads a bare `no` as False; compose wants the string "no".
    assert job.get("restart") == "no"


@pytest.mark.parametrize("name", WORKERS)
def test_worker_healthcheck_is_gongji_health(services: dict, name: str) -> None:
    from simulator.cli import build_parser
    hc = services[name]["healthcheck"]
    test = hc["test"]
    assert test[0] == "CMD" and test[1] == "gongji", test  # exec form: no shell in between
    args = build_parser().parse_args(test[2:])  # a real CLI command (tests/test_ci.py runs the same one)
    assert args.command == "health" and args.service == name
    assert test[2:] == ["health", name]  # namespace and broker user from the worker's own environment
    for key in ("interval", "timeout", "retries"):
        assert key in hc


def test_exit_code_of_the_scenario_is_the_exit_code_of_compose(services: dict) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "docker compose up --exit-code-from scenario" in readme
    assert "--exit-code-from scenario" in (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    # The job's exit code is gongji run's: 0 / 1 / 2 / 3, listed in `gongji run --help`.
    from simulator.errors import EXIT_CODES_HELP
    for code in ("0", "1", "2", "3"):
        assert f"  {code}  " in EXIT_CODES_HELP
    # Only the scenario may end: the broker and the workers restart, the job does not.
    assert [n for n, s in services.items() if s.get("restart") == "no"] == ["scenario"]


def test_reports_belong_to_the_host_user(services: dict) -> None:
    user = services["scenario"]["user"]
    assert user == "${GONGJI_UID:-1000}:${GONGJI_GID:-1000}"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "export GONGJI_UID=$(id -u) GONGJI_GID=$(id -g)" in readme and "mkdir -p reports" in readme
    # The image's user owns nothing the job needs to write: it writes only /reports (the bind mount).
    env = env_of(services["scenario"])
    assert env.get("HOME") == "/tmp"
    assert "PYTHONDONTWRITEBYTECODE=1" in (REPO / "Dockerfile").read_text(encoding="utf-8")


def test_definitions_load_on_rabbitmq_4() -> None:
    """RabbitMQ 4 removed classic mirrored queues: no ha-* policies or arguments; every work queue quorum."""
    text = (REPO / "deploy" / "rabbitmq" / "definitions.json").read_text(encoding="utf-8")
    defs = json.loads(text)
    assert "ha-mode" not in text and "ha-params" not in text and "x-ha-policy" not in text
    for policy in defs.get("policies", []):
        assert not any(k.startswith("ha-") for k in policy.get("definition", {})), policy
    for q in defs["queues"]:
        args = q["arguments"]
        # every work queue quorum; the events archive a stream (a replayable log, not a second quorum copy)
        expected = "stream" if q["name"].endswith(".events.archive") else "quorum"
        assert args.get("x-queue-type") == expected, q["name"]
        assert q["durable"] is True and q["auto_delete"] is False
        assert not {"x-queue-master-locator", "x-queue-mode"} & set(args), q["name"]  # 4.x rejects/ignores them
    # The file is what `gongji broker-definitions` prints today.
    from services.shared.definitions import build, render
    assert render(build("gongji")) == text


def test_bureau_is_scalable(services: dict) -> None:
    bureau = services["bureau"]
    assert "container_name" not in bureau
    assert not bureau.get("ports")
    assert "hostname" not in bureau


def test_dockerfile_entrypoint_is_gongji() -> None:
    entrypoints = [args for word, args in dockerfile_instructions() if word == "ENTRYPOINT"]
    assert entrypoints, "Dockerfile has no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == ["gongji"]
    with open(REPO / "pyproject.toml", "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts.get("gongji") == "simulator.cli:main"


def test_dockerfile_installs_editable_with_policies() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("python:3.11")
    assert ("WORKDIR", "/app") in instructions
    runs = " ".join(args for word, args in instructions if word == "RUN")
    assert "pip install --no-cache-dir -e /app" in runs
    ignored = {line.strip().strip("/") for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert "policies" not in ignored and "data" in ignored
    assert (REPO / "policies").is_dir() and any((REPO / "policies").glob("*.yaml"))


def test_gateway_service_publishes_its_port(services: dict) -> None:
    """The HTTP gateway (tests/test_gateway.py runs this very command with its own host/port flags)."""
    from services.shared.definitions import LOCAL_PASSWORDS
    gw = services["gateway"]
    assert gw["command"] == ["gateway"]
    env = env_of(gw)
    assert env["GONGJI_GATEWAY_HOST"] == "0.0.0.0"
    assert f"{env['GONGJI_GATEWAY_PORT']}:{env['GONGJI_GATEWAY_PORT']}" in [str(p) for p in gw["ports"]]
    url = urlsplit(env["AMQP_URL"])
    assert (url.hostname, url.username, url.password) == ("rabbitmq", "gateway", LOCAL_PASSWORDS["gateway"])
    assert env["GONGJI_DECLARE"] == "passive"


# ---- profile `cluster` (issue 12): three RabbitMQ nodes, workers on the three URLs ------------------------------
CLUSTER_NODES = ("rabbit-1", "rabbit-2", "rabbit-3")


def test_cluster_profile_has_three_nodes_of_the_pinned_image_with_one_cookie(services: dict) -> None:
    nodes = {name: services[name] for name in CLUSTER_NODES}
    cookies = set()
    for name, node in nodes.items():
        assert node["profiles"] == ["cluster"], name  # not started by a plain `docker compose up`
        assert node["image"] == services["rabbitmq"]["image"], name
        assert node["hostname"] == name and "container_name" not in node
        cookies.add(env_of(node)["RABBITMQ_ERLANG_COOKIE"])
        mounts = [str(v) for v in node["volumes"]]
        assert "./deploy/rabbitmq/definitions.json:/etc/rabbitmq/definitions.json:ro" in mounts
        assert any(m.startswith("./deploy/rabbitmq/cluster.conf:/etc/rabbitmq/conf.d/") for m in mounts), mounts
        test = node["healthcheck"]["test"]
        assert "rabbitmq-diagnostics" in test and "ping" in test
    assert len(cookies) == 1 and "" not in cookies  # one Erlang cookie for the three
    assert "profiles" not in services["rabbitmq"]  # the single broker stays the default


def test_cluster_forms_by_classic_config_peer_discovery() -> None:
    conf = {}
    for line in (REPO / "deploy" / "rabbitmq" / "cluster.conf").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            conf[key.strip()] = value.strip()
    assert conf["cluster_formation.peer_discovery_backend"] == "classic_config"
    peers = sorted(v for k, v in conf.items() if k.startswith("cluster_formation.classic_config.nodes."))
    assert peers == [f"rabbit@{name}" for name in CLUSTER_NODES]  # node name = rabbit@<hostname>
    assert conf["quorum_queue.continuous_membership_reconciliation.target_group_size"] == "3"


@pytest.mark.parametrize("name", WORKERS)
def test_cluster_workers_fail_over_across_the_three_nodes(services: dict, name: str) -> None:
    from services.shared.definitions import LOCAL_PASSWORDS
    from services.shared.failover import split  # how the workers read AMQP_URL

    svc = services[f"cluster-{name}"]
    assert svc["profiles"] == ["cluster"] and svc["command"] == ["worker", name]
    urls = [urlsplit(u) for u in split(env_of(svc)["AMQP_URL"])]
    assert [u.hostname for u in urls] == list(CLUSTER_NODES)
    assert {(u.scheme, u.port or 5672, u.username, u.password) for u in urls} == \
        {("amqp", 5672, name, LOCAL_PASSWORDS[name])}  # the worker's own broker user on every node
    assert depends_of(svc) == {node: "service_healthy" for node in CLUSTER_NODES}
    assert env_of(svc)["GONGJI_DECLARE"] == "passive"
    assert svc["healthcheck"]["test"] == ["CMD", "gongji", "health", name]
    own = [str(v).split(":")[0] for v in svc["volumes"]]
    assert own == [f"cluster-{name}-data"] and own[0] not in [str(v).split(":")[0] for v in services[name]["volumes"]]
def test_postgres_service_for_the_workers(compose: dict, services: dict) -> None:
    """Issue 12: `--profile postgres` adds a pinned PostgreSQL with a healthcheck; the workers take it through
    GONGJI_DATABASE_URL (empty by default: SQLite) and wait for it healthy when the profile is on."""
    pg = services["postgres"]
    image, _, tag = pg["image"].partition(":")
    assert image == "postgres" and tag.split(".")[0] == "15" and tag.count(".") >= 1, pg["image"]  # pinned minor
    assert pg["profiles"] == ["postgres"]
    test = pg["healthcheck"]["test"]
    env = env_of(pg)
    assert test[:2] == ["CMD", "pg_isready"] and env["POSTGRES_USER"] in test and env["POSTGRES_DB"] in test
    mounts = [str(v) for v in pg.get("volumes", [])]
    assert any(m.split(":")[0] in compose["volumes"] and m.split(":")[1] == "/var/lib/postgresql/data"
               for m in mounts), mounts
    # The URL the top of the file documents names this service, its user, password and database ...
    documented = [line for line in (REPO / "docker-compose.yml").read_text(encoding="utf-8").splitlines()
                  if "GONGJI_DATABASE_URL=postgresql://" in line]
    assert documented, "the compose file says how to run the workers on PostgreSQL"
    url = urlsplit(documented[0].split("GONGJI_DATABASE_URL=", 1)[1].split()[0])
    assert (url.hostname, url.port, url.path.lstrip("/")) == ("postgres", 5432, env["POSTGRES_DB"])
    assert (url.username, url.password) == (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"])
    assert "--profile postgres" in documented[0]
    # ... and every worker passes GONGJI_DATABASE_URL through, and waits for the database when it is there.
    from simulator.cli import build_parser
    for name in WORKERS:
        svc = services[name]
        assert env_of(svc)["GONGJI_DATABASE_URL"] == "${GONGJI_DATABASE_URL:-}"
        dep = svc["depends_on"]["postgres"]
        assert dep == {"condition": "service_healthy", "required": False}
        args = build_parser().parse_args([*svc["command"], "--database-url", url.geturl()])
        assert args.database_url == url.geturl()
