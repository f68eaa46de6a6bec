"""The ``redlight`` command line (SPEC §5). Every error is one clear sentence, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import structlog
from paho.mqtt.client import topic_matches_sub

from redlight import __version__
from redlight.broker import (
    BrokerClient,
    BrokerError,
    BrokerEvent,
    Connected,
    ConnectFailed,
    Message,
    Received,
)
from redlight.config import Config, ConfigError, config_path, describe, load_config
from redlight.durations import format_duration, parse_duration
from redlight.messages import Topics, dumps, loads_object
from redlight.presets import Plug, PlugAvailability, PlugState, build_plug

if TYPE_CHECKING:
    from redlight.storage import SessionRow

log = structlog.get_logger("redlight")

#: How long a command waits for the daemon's answer.
ANSWER_TIMEOUT_S: Final = 10.0
#: ``stop`` waits this much longer than ``confirm_timeout`` for the plugs' OFF.
STOP_MARGIN_S: Final = 3.0
#: How long a client waits to connect to the broker.
CONNECT_TIMEOUT_S: Final = 10.0

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_CONFIG: Final = 78  # EX_CONFIG: systemd does not restart on it (RestartPreventExitStatus)


class UserError(Exception):
    """A failure to report as one sentence."""


#: Examples shown by ``redlight COMMAND --help``.
_EXAMPLES: Final[dict[str, tuple[str, ...]]] = {
    "run": ("redlight run --config /etc/redlight/config.toml", "redlight run --log-level debug"),
    "check": (
        "redlight check --config config/example.toml",
        "redlight check --connect   # and the broker, the credentials and every plug",
    ),
    "status": ("redlight status",),
    "start": (
        "redlight start hip_left --duration 8m   # a unit is needed: 8m, 90s, 8min",
        "redlight start hip_left --dose 25 --follow",
        "redlight start --routine post_run --follow",
    ),
    "stop": ("redlight stop hip_left", "redlight stop --all"),
    "extend": ("redlight extend hip_left 2m   # never past safety.max_on of on-time in all",),
    "pause": ("redlight pause hip_left   # resume within safety.max_pause, or the session ends",),
    "resume": ("redlight resume hip_left",),
    "off": (
        "redlight off --all   # ExecStopPost=: straight to the plugs, no daemon needed",
        "redlight off hip_left hip_right",
    ),
    "history": (
        "redlight history",
        "redlight history --days 28 --panel hip_left",
        "redlight history --json | jq .streak_days",
    ),
    "schedules": ("redlight schedules",),
    "demo": ("redlight demo",),
    "completion": ("redlight completion bash > /etc/bash_completion.d/redlight",),
    "print-unit": ("redlight print-unit | sudo tee /etc/systemd/system/redlight.service",),
    "print-example": ("redlight print-example tasmota | sudo tee /etc/redlight/config.toml",),
}

#: Exit codes, documented in ``redlight --help`` and the README.
_EXIT_CODES: Final = (
    "exit codes: 0 done; 1 failed or rejected (one sentence on stderr); "
    "78 config error in 'run' (systemd does not restart); 130 interrupted"
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-command per SPEC §5 row."""
    parser = argparse.ArgumentParser(
        prog="redlight",
        description="Safe timed red-light therapy sessions on MQTT smart plugs.",
        epilog=_EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"redlight {__version__}")
    commands = _Commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    _add_service_commands(commands)
    _add_session_commands(commands)
    _add_report_commands(commands)
    return parser


class _Commands:
    """Adds sub-commands that share ``--config`` and show their examples in ``--help``."""

    def __init__(self, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self.sub = sub
        self.common = argparse.ArgumentParser(add_help=False)
        self.common.add_argument(
            "--config",
            metavar="PATH",
            help="config file (default: $REDLIGHT_CONFIG or /etc/redlight/config.toml)",
        )

    def add(self, name: str, help_text: str, *, config: bool = True) -> argparse.ArgumentParser:
        """A sub-command whose description is its help text as a sentence."""
        examples = "\n".join(f"  {line}" for line in _EXAMPLES[name])
        return self.sub.add_parser(
            name,
            parents=[self.common] if config else [],
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
            epilog=f"examples:\n{examples}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )


def _add_service_commands(commands: _Commands) -> None:
    run = commands.add("run", "run the daemon in the foreground")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument(
        "--log-format",
        default="auto",
        choices=["auto", "console", "json"],
        help="auto: console on a terminal, JSON lines otherwise (journald is detected)",
    )
    check = commands.add("check", "validate the config file: one line per problem")
    check.add_argument(
        "--connect",
        action="store_true",
        help="also connect to the broker and ask every plug its state (switches nothing)",
    )
    commands.add("status", "show every panel's state, read from the broker")


def _add_session_commands(commands: _Commands) -> None:
    start = commands.add("start", "start a session (or a routine) and print the outcome")
    start.add_argument("panel", nargs="?", help="panel id")
    group = start.add_mutually_exclusive_group()
    group.add_argument(
        "--duration", help="session length with its unit, e.g. 90s, 10m, 8min (no bare numbers)"
    )
    group.add_argument("--dose", type=float, metavar="J_CM2", help="dose in J/cm²")
    start.add_argument("--routine", metavar="ID", help="start a routine instead of a panel")
    start.add_argument("--follow", action="store_true", help="show a countdown until it ends")

    stop = commands.add("stop", "stop a session, or every session")
    stop.add_argument("panel", nargs="?", help="panel id")
    stop.add_argument("--all", action="store_true", help="stop every session")

    extend = commands.add("extend", "make a running or paused session longer, within max_on")
    extend.add_argument("panel", help="panel id")
    extend.add_argument("by", help="how much longer, with its unit, e.g. 2m or 90s")
    pause = commands.add("pause", "switch a panel off and keep its session, to resume it")
    pause.add_argument("panel", help="panel id")
    resume = commands.add("resume", "switch a paused session's panel on for what it has left")
    resume.add_argument("panel", help="panel id")

    off = commands.add("off", "switch plugs OFF directly, without the daemon")
    off.add_argument("panels", nargs="*", metavar="PANEL", help="panel ids (or --all)")
    off.add_argument("--all", action="store_true", help="every configured plug")


def _add_report_commands(commands: _Commands) -> None:
    history = commands.add(
        "history", "sessions, minutes and dose per day and panel; adherence; streak"
    )
    history.add_argument("--days", type=int, default=14, help="how many days back (default 14)")
    history.add_argument("--panel", metavar="ID", help="only this panel")
    history.add_argument("--json", action="store_true", help="JSON for scripts")

    commands.add("schedules", "list schedules with their enabled state and next run")
    commands.add(
        "demo", "the whole system with simulated plugs: no broker, no hardware", config=False
    )
    completion = commands.add("completion", "print a shell completion script", config=False)
    completion.add_argument("shell", choices=["bash", "zsh"])
    # The shipped files, so that an installed package needs no checkout (redlight.shipped).
    commands.add("print-unit", "print the systemd unit redlight ships", config=False)
    example = commands.add("print-example", "print a shipped example config", config=False)
    example.add_argument("name", nargs="?", help="which one (without it: list them)")


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """A completion script for ``redlight``'s commands and options (bash; zsh via bashcompinit)."""
    commands: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub_parser in action.choices.items():
                commands[name] = sorted(
                    option
                    for sub_action in sub_parser._actions
                    for option in sub_action.option_strings
                    if option.startswith("--")
                )
    cases = "\n".join(
        f'        {name}) opts="{" ".join(options)}" ;;' for name, options in commands.items()
    )
    body = f"""_redlight() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}}
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{" ".join(commands)} --help --version" -- "$cur"))
        return
    fi
    local opts=""
    case "${{COMP_WORDS[1]}}" in
{cases}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts --help" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -F _redlight redlight
"""
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + body
    return body


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``redlight`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as error:
        for line in error.problems:
            print(line, file=sys.stderr)
        return EXIT_CONFIG if args.command == "run" else EXIT_FAILED
    except (UserError, BrokerError) as error:
        print(f"redlight: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "check":
        return _check(args)
    if args.command == "demo":
        from redlight.demo import main as demo

        return demo()
    if args.command == "completion":
        print(completion_script(build_parser(), args.shell), end="")
        return EXIT_OK
    if args.command in ("print-unit", "print-example"):
        return _print_shipped(args)
    config = load_config(args.config)
    if args.command == "run":
        from redlight.daemon import run_daemon

        return run_daemon(
            config,
            config_file=config_path(args.config),
            log_level=args.log_level,
            log_format=args.log_format,
        )
    _quiet_logging()
    return _client_command(config, args)


def _print_shipped(args: argparse.Namespace) -> int:
    """``print-unit`` and ``print-example``: a file shipped in the package, or the names."""
    from redlight import shipped

    if args.command == "print-unit":
        print(shipped.unit_file().read_text(encoding="utf-8"), end="")
    elif args.name is None:
        print("\n".join(shipped.example_names()))
    else:
        try:
            print(shipped.example_file(args.name).read_text(encoding="utf-8"), end="")
        except ValueError as error:
            raise UserError(str(error)) from None
    return EXIT_OK


def _client_command(config: Config, args: argparse.Namespace) -> int:
    """The commands that talk to the broker, or read the history, as a client of the daemon."""
    if args.command == "history":
        return _history(config, args)
    if args.command in ("status", "schedules"):
        return asyncio.run(_status(config) if args.command == "status" else _schedules(config))
    if args.command == "start":
        return asyncio.run(_start(config, args))
    if args.command == "stop":
        return asyncio.run(_stop(config, args))
    if args.command in ("extend", "pause", "resume"):
        return asyncio.run(_control(config, args))
    return asyncio.run(_off(config, _off_panels(config, args)))


def _quiet_logging() -> None:
    """The command line says what went wrong in its own one sentence: the broker adapter's log
    lines (a refused connection, say) would only repeat it, as JSON, on the same stderr."""
    from redlight.logs import configure_logging

    configure_logging("critical")


def _check(args: argparse.Namespace) -> int:
    from redlight.daemon import tls_options

    path = config_path(args.config)
    try:
        config = load_config(path)
        tls_options(config)  # the files 'run' would refuse (exit 78), found here first
    except ConfigError as error:
        for line in error.problems:
            print(line, file=sys.stderr)
        return EXIT_FAILED
    from redlight.storage import unusable

    problem = unusable(config.storage.path)
    if problem is not None:
        # redlight run would start without a history (rule 12: it still switches panels
        # off), so the journal, cooldowns after a restart and daily_max would be lost.
        why, always = problem
        if always:
            print(f"storage.path: {why}", file=sys.stderr)
            return EXIT_FAILED
        print(f"storage.path: {why} (fine if redlight runs as another user)", file=sys.stderr)
    summary = describe(config)
    counts = ", ".join(
        _plural(len(summary[kind]), kind[:-1]) for kind in ("panels", "routines", "schedules")
    )
    print(f"{path}: OK ({counts}; max_on {summary['max_on']})")
    if args.connect:
        _quiet_logging()
        return asyncio.run(_check_connect(config))
    return EXIT_OK


async def _check_connect(config: Config) -> int:
    """``check --connect``: the broker takes the connection (and the credentials), and each
    plug answers the question redlight asks it (safety rule 8's), one line per panel. Only
    state questions are sent, the ones the daemon sends every poll: nothing is switched."""
    base = config.mqtt.base_topic
    plugs = {key: build_plug(key, p.plug, base_topic=base) for key, p in config.panels.items()}
    within = config.safety.confirm_timeout.total_seconds()
    try:
        answers, heard = await _ask_plugs(config, plugs, within)
    except UserError as error:
        print(f"broker: {error}", file=sys.stderr)
        return EXIT_FAILED
    failed = False
    for key, plug in plugs.items():
        answer = answers.get(key)
        if answer is not None:
            on, topic, retained = answer
            how = "retained state" if retained else "answered"
            print(f"{key}: {how}, {'on' if on else 'off'} ({plug.preset} on {topic})")
            continue
        failed = True
        said = heard.get(key)
        aside = f" ({said[0]} says {'online' if said[1] else 'offline'})" if said else ""
        silent = f"{key}: no answer on {plug.report_topic} within {within:g}s{aside}"
        print(silent, file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


async def _ask_plugs(
    config: Config, plugs: dict[str, Plug], within_s: float
) -> tuple[dict[str, tuple[bool, str, bool]], dict[str, tuple[str, bool]]]:
    """Connect (``UserError`` with why if not), say so, ask every plug its state, and collect
    what each reported within ``within_s``: panel -> (on, topic, retained), read by its
    preset's reader; and panel -> (topic, online) for the availability heard from it."""
    answers: dict[str, tuple[bool, str, bool]] = {}
    heard: dict[str, tuple[str, bool]] = {}
    async with Link(config, "check") as link:
        who = f" as {config.mqtt.username}" if config.mqtt.username else ""
        print(f"broker: connected to {config.mqtt.url}{who} (MQTT {config.mqtt.protocol})")
        filters = sorted({t for plug in plugs.values() for t in plug.subscriptions})
        await link.subscribe([link.topics.status, *filters])
        settled = await link.messages(quiet_s=0.3)  # retained states and availability
        status = [m.payload for m in settled if m.topic == link.topics.status]
        running = "running" if status[-1:] == [b"online"] else "not running (fine for a check)"
        print(f"redlight: {running}, by {link.topics.status}")
        for message in settled:
            _read_answer(plugs, message, answers, heard)
        for plug in plugs.values():
            for question in plug.ask_state():
                link.client.publish(question)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while len(answers) < len(plugs) and loop.time() < deadline:
            arrived = await link.wait_for(lambda m: True, deadline - loop.time())
            if arrived is None:
                break
            _read_answer(plugs, arrived, answers, heard)
    return answers, heard


def _read_answer(
    plugs: dict[str, Plug],
    message: Received,
    answers: dict[str, tuple[bool, str, bool]],
    heard: dict[str, tuple[str, bool]],
) -> None:
    """Note what ``message`` says of each plug. A retained state counts only for a plug that
    cannot be asked (ESPHome: its state is retained); one that can must answer now."""
    for key, plug in plugs.items():
        report = plug.read(message.topic, message.payload)
        if isinstance(report, PlugState) and not (message.retain and plug.ask_state()):
            answers[key] = (report.on, message.topic, message.retain)
        elif isinstance(report, PlugAvailability):
            heard[key] = (message.topic, report.online)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _history(config: Config, args: argparse.Namespace) -> int:
    from redlight.history import as_json, as_text, build_report

    if not 1 <= args.days <= 3660:
        raise UserError("--days must be between 1 and 3660")
    _known_panel(config, args.panel)
    path = config.storage.path
    now = datetime.now().astimezone()
    zone = now.tzinfo
    assert zone is not None
    today = now.date()
    since = datetime.combine(today - timedelta(days=args.days - 1), datetime.min.time(), zone)
    # The streak may reach back before the period: read up to a year before it.
    rows, empty = _read_history(path, since=since - timedelta(days=366))
    report = build_report(
        config, rows, today=today, days=args.days, zone=zone, now=now, panel=args.panel
    )
    if args.json:
        print(json.dumps(as_json(report), ensure_ascii=False, indent=2))
    elif empty is not None:
        print(f"no history yet: {empty}")
    else:
        print("\n".join(as_text(report)))
    return EXIT_OK


def _read_history(path: Path, *, since: datetime) -> tuple[list[SessionRow], str | None]:
    """The sessions since ``since``, and why there are none when the history is empty.

    "No history yet" is a fine answer (exit 0); a database that is there but cannot be read
    is not, and must not look like one (exit 1, the path and why).
    """
    from redlight.storage import History, StorageError, unusable

    try:
        path.stat()
    except FileNotFoundError:
        problem = unusable(path)
        if problem is not None:  # what is left for this user: a directory it may not write
            return [], f"{path} does not exist yet, and {problem[0]} (see storage.path)"
        return [], f"{path} does not exist yet (redlight run creates it)"
    except OSError as error:
        raise UserError(f"the history database is unavailable: {path}: {error.strerror}") from None
    try:
        with History.open(path) as history:
            rows = history.sessions(since=since)
            if not rows and not history.has_sessions():
                return rows, f"{path} holds no sessions"
    except StorageError as error:
        raise UserError(f"the history database is unavailable: {error}") from None
    return rows, None


# ---------------------------------------------------------------------- broker clients


class Link:
    """A short-lived client connection for the command line, as an async context manager."""

    def __init__(self, config: Config, purpose: str) -> None:
        """Prepare a client with a unique id so it never kicks the daemon off the broker."""
        from redlight.daemon import broker_from_config

        suffix = secrets.token_hex(3)
        self.config = config
        self.topics = Topics(config.mqtt.base_topic)
        self.client: BrokerClient = broker_from_config(
            config, client_id=f"{config.mqtt.client_id}-{purpose}-{suffix}", will=None
        )
        self.queue: asyncio.Queue[BrokerEvent] = asyncio.Queue()

    async def __aenter__(self) -> Link:
        """Connect, or fail with one sentence: at the first failed attempt (refused, unknown
        host, TLS, credentials: each says so at once), or when the broker does not answer."""
        self.client.start(self.queue.put_nowait)
        failed = f"did not answer within {CONNECT_TIMEOUT_S:g} s"
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                while True:
                    event = await self.queue.get()
                    if isinstance(event, Connected):
                        return self
                    if isinstance(event, ConnectFailed):
                        failed = event.reason
                        break
        except TimeoutError:
            pass
        await self.client.stop()
        raise UserError(f"cannot connect to the broker at {self.config.mqtt.url}: {failed}")

    async def __aexit__(self, *exc: object) -> None:
        """Disconnect."""
        await self.client.stop()

    async def subscribe(self, filters: Sequence[str]) -> None:
        """Subscribe and give retained messages a moment to arrive."""
        self.client.subscribe(filters)

    async def messages(self, quiet_s: float) -> list[Received]:
        """Collect messages until ``quiet_s`` passes with nothing new."""
        got: list[Received] = []
        while True:
            try:
                event = await asyncio.wait_for(self.queue.get(), quiet_s)
            except TimeoutError:
                return got
            if isinstance(event, Received):
                got.append(event)

    async def retained(self, topics: set[str], quiet_s: float) -> list[Received]:
        """Collect messages until one has come on each of ``topics`` (retained ones arrive at
        once after the subscription), or ``quiet_s`` passes with nothing new."""
        got: list[Received] = []
        missing = set(topics)
        while missing:
            message = await self.wait_for(lambda m: True, quiet_s)
            if message is None:
                break
            got.append(message)
            missing.discard(message.topic)
        return got

    async def wait_for(self, predicate: Any, within_s: float) -> Received | None:
        """The first received message for which ``predicate`` is true, or None."""
        try:
            async with asyncio.timeout(within_s):
                while True:
                    event = await self.queue.get()
                    if isinstance(event, Received) and predicate(event):
                        return event
        except TimeoutError:
            return None

    def publish(self, topic: str, payload: str) -> None:
        """Publish a command (never retained)."""
        if not self.client.publish(Message(topic, payload)):
            raise UserError("the broker connection was lost before the command was sent")


async def _daemon_online(link: Link) -> None:
    await link.subscribe([link.topics.status])
    status = await link.wait_for(lambda m: m.topic == link.topics.status, 2.0)
    if status is None or status.payload != b"online":
        raise UserError(
            f"redlight is not running (nothing says online on {link.topics.status}); "
            "start it with 'redlight run' or systemctl"
        )


def _json(payload: bytes) -> dict[str, Any]:
    return loads_object(payload) or {}


async def _status(config: Config) -> int:
    async with Link(config, "status") as link:
        topics = link.topics
        await link.subscribe([topics.status, topics.panel_states])
        wanted = {topics.status} | {topics.panel_state(p) for p in config.panels}
        received = await link.retained(wanted, quiet_s=1.0)
    status = next((m.payload.decode() for m in received if m.topic == topics.status), "unknown")
    states = _panel_states(topics, received)
    print(f"redlight: {status}  ({config.mqtt.url}, base topic {topics.base})")
    for panel_id in config.panels:
        state = states.get(panel_id)
        name = config.panel_name(panel_id)
        if state is None:
            print(f"  {panel_id:<16} {name:<24} no state published yet")
            continue
        session = state.get("session") or {}
        plug = state.get("plug", "unknown")
        heard = state.get("plug_online")
        online = "not heard from" if heard is None else "online" if heard else "OFFLINE"
        line = f"  {panel_id:<16} {name:<24} {state.get('state', '?'):<9} plug {plug:<7} {online}"
        if session:
            line += f"  until {str(session.get('ends_at', '?'))[11:19]}"
            line += f"{_left(session.get('ends_at'))} ({session.get('source')})"
        today = state.get("today_s")
        if isinstance(today, int | float):
            line += f"  today {format_duration(today)}"
        print(line)
    return EXIT_OK if status == "online" else EXIT_FAILED


def _left(ends_at: object) -> str:
    """``, 8m12s left`` from an ISO 8601 end time, or nothing if it cannot be read."""
    try:
        end = datetime.fromisoformat(str(ends_at))
    except ValueError:
        return ""
    if end.tzinfo is None:
        return ""
    seconds = max(0, round((end - datetime.now(end.tzinfo)).total_seconds()))
    return f", {format_duration(seconds)} left"


def _start_command(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON start command for ``redlight start PANEL``, with a fresh request id."""
    body: dict[str, Any] = {"action": "start", "source": "cli"}
    if args.duration:
        body["duration"] = _with_unit(args.duration, "--duration")
    if args.dose is not None:
        body["dose_j_cm2"] = args.dose
    body["request_id"] = f"cli-{secrets.token_hex(4)}"
    return body


def _answer(answer: Received | None) -> dict[str, Any] | None:
    """The daemon's answer to a start as an event, or None (said on stderr) if it was refused."""
    if answer is None:
        raise UserError(f"redlight did not answer within {ANSWER_TIMEOUT_S:g} s")
    event = _json(answer.payload)
    if event.get("event_type") == "command_rejected":
        print(f"rejected: {event.get('message')} ({event.get('reason')})", file=sys.stderr)
        return None
    return event


async def _start(config: Config, args: argparse.Namespace) -> int:
    if args.routine:
        _routine_alone(args)
        return await _start_routine(config, args.routine, follow=args.follow)
    if not args.panel:
        raise UserError("name a panel to start, e.g. 'redlight start hip_left'")
    _known_panel(config, args.panel)
    body = _start_command(args)
    async with Link(config, "cli") as link:
        event = _answer(await _ask(link, args.panel, body))
        if event is None:
            return EXIT_FAILED
        duration = event.get("duration_s", 0)
        print(
            f"started {args.panel} for {format_duration(float(duration))}, "
            f"until {str(event.get('ends_at', ''))[11:19]} (session {event.get('session')})"
        )
        if args.follow:
            try:
                return await _follow(link, args.panel, str(event.get("session")), float(duration))
            except asyncio.CancelledError:
                print(
                    f"\nstopped following; the session on {args.panel} goes on until "
                    f"{str(event.get('ends_at', ''))[11:19]} ('redlight stop {args.panel}' "
                    "ends it)",
                    file=sys.stderr,
                )
                raise
    return EXIT_OK


def _routine_alone(args: argparse.Namespace) -> None:
    """``start PANEL --routine R`` ignored the panel: a routine takes nothing beside it."""
    if args.panel or args.duration or args.dose is not None:
        raise UserError(
            "a routine sets its own panels and lengths: 'redlight start --routine ID', "
            "or 'redlight start PANEL [--duration 10m | --dose 30]', not both"
        )


#: ``start --routine``'s command on ``<b>/routine/<id>/set``: JSON rather than START, so the
#: routine's source is "cli", not Home Assistant.
_ROUTINE_START: Final = {"action": "start", "source": "cli"}


async def _start_routine(config: Config, routine_id: str, *, follow: bool) -> int:
    if routine_id not in config.routines:
        raise UserError(f"there is no routine {routine_id!r} in the config")
    async with Link(config, "cli") as link:
        await _daemon_online(link)
        await link.subscribe([link.topics.daemon_event])
        await link.messages(quiet_s=0.2)
        link.publish(link.topics.routine_set(routine_id), dumps(_ROUTINE_START))

        def ours(message: Received) -> bool:
            event = _json(message.payload)
            return event.get("routine") == routine_id and event.get("event_type") in {
                "routine_started",
                "command_rejected",
                "routine_finished",
            }

        event = _answer(await link.wait_for(ours, ANSWER_TIMEOUT_S))
        if event is None:
            return EXIT_FAILED
        name = event.get("name", routine_id)
        if event.get("event_type") == "routine_finished":  # done before it began (no steps)
            print(f"routine {name}: {_finished(event)}")
            return EXIT_OK if event.get("reason") == "completed" else EXIT_FAILED
        first = await _first_step(link, str(event.get("run")))
        if isinstance(first, str):
            print(f"routine {name} did not start: {first}", file=sys.stderr)
            return EXIT_FAILED
        print(f"started routine {name} ({_plural(int(event.get('steps') or 0), 'step')})")
        if not follow:
            return EXIT_OK
        print(_step_line(first))
        try:
            return await _follow_routine(link, routine_id)
        except asyncio.CancelledError:
            print(
                f"stopped following; routine {name} goes on ('redlight stop --all' ends it)",
                file=sys.stderr,
            )
            raise


async def _first_step(link: Link, run: str) -> dict[str, Any] | str:
    """Wait for the first step's outcome: its ``routine_step`` once under way, else why not.

    A routine's first step comes in the same batch as its start: ``routine_step``, then one
    ``session_started`` per panel of the step, or a refusal and ``routine_finished`` (aborted).
    """
    first: dict[str, Any] | None = None
    waiting: set[str] = set()  # the first step's panels whose session has not started yet

    def ours(message: Received) -> bool:
        event = _json(message.payload)
        started = event.get("event_type") == "session_started" and event.get("panel") in waiting
        return event.get("run") == run or started

    while first is None or waiting:  # a pause first: nothing to wait for after its step
        message = await link.wait_for(ours, ANSWER_TIMEOUT_S)
        if message is None:
            return f"redlight did not answer within {ANSWER_TIMEOUT_S:g} s"
        event = _json(message.payload)
        kind = event.get("event_type")
        if kind == "routine_finished":
            return _finished(event)
        if kind == "routine_step" and first is None:
            first, waiting = event, set(event.get("panels") or [])
        elif kind == "session_started":
            waiting.discard(str(event.get("panel")))
    return first


def _step_line(event: dict[str, Any]) -> str:
    what = event.get("prompt") or ", ".join(event.get("panels") or [])
    return f"step {event.get('step')}/{event.get('steps')}: {what}"


def _finished(event: dict[str, Any]) -> str:
    """``aborted (hip_left: in cooldown for 3h59m)`` from a ``routine_finished`` event."""
    message = event.get("message")
    return f"{event.get('reason')} ({message})" if message else str(event.get("reason"))


async def _follow_routine(link: Link, routine_id: str) -> int:
    """Each step of a routine as it begins, until its ``routine_finished`` event."""
    while True:
        message = await link.wait_for(
            lambda m: _json(m.payload).get("routine") == routine_id, 24 * 3600.0
        )
        if message is None:
            return EXIT_FAILED
        event = _json(message.payload)
        kind = event.get("event_type")
        if kind == "routine_step":
            print(_step_line(event))
        elif kind == "routine_finished":
            print(f"routine finished: {_finished(event)}")
            return EXIT_OK if event.get("reason") == "completed" else EXIT_FAILED


async def _schedules(config: Config) -> int:
    """Every schedule with its enabled state and next run, as the daemon publishes them."""
    if not config.schedules:
        print("no schedules in the config")
        return EXIT_OK
    async with Link(config, "schedules") as link:
        await link.subscribe([f"{link.topics.base}/schedule/+/state"])
        received = await link.messages(quiet_s=1.0)
    states = {m.topic.split("/")[-2]: _json(m.payload) for m in received}
    for key, schedule in config.schedules.items():
        state = states.get(key)
        what = (
            f"routine {schedule.routine}" if schedule.routine else ", ".join(schedule.panels or ())
        )
        zone = schedule.timezone or "local time"
        if state is None:
            status, upcoming = "unknown (is redlight running?)", ""
        else:
            status = "enabled" if state.get("enabled") else "disabled"
            upcoming = f"  next {state.get('next_run') or '-'}"
        window = ""
        if schedule.start_date or schedule.end_date:
            window = f"  {schedule.start_date or '...'} to {schedule.end_date or '...'}"
        print(
            f"  {key:<16} {schedule.cron:<18} {zone:<18} {schedule.mode:<6} {what:<20} "
            f"{status}{upcoming}{window}"
        )
    return EXIT_OK


async def _follow(link: Link, panel: str, session: str, duration_s: float) -> int:
    """A live countdown until the session's ``session_finished`` event."""
    loop = asyncio.get_running_loop()
    end = loop.time() + duration_s
    tty = sys.stdout.isatty()
    while True:
        event = await link.wait_for(
            lambda m: (
                _json(m.payload).get("session") == session
                and _json(m.payload).get("event_type") == "session_finished"
            ),
            1.0,
        )
        if event is not None:
            reason = _json(event.payload).get("reason")
            print(("\r" if tty else "") + f"{panel}: finished ({reason})" + " " * 30)
            return EXIT_OK
        left = max(0.0, end - loop.time())
        done = 1.0 - left / duration_s if duration_s else 1.0
        bar = "#" * int(done * 30)
        line = f"{panel}: [{bar:<30}] {format_duration(round(left))} left"
        print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
        if left <= 0 and loop.time() > end + ANSWER_TIMEOUT_S:
            print()
            raise UserError("the session should have ended, but redlight did not say so")


async def _stop(config: Config, args: argparse.Namespace) -> int:
    """Stop, and say what happened: stopped (the plug confirmed OFF), not running, or not
    confirmed (the daemon called the plug unresponsive, or said nothing in time)."""
    if not args.all and not args.panel:
        raise UserError("name a panel to stop, or use --all")
    _known_panel(config, args.panel)
    panels = list(config.panels) if args.all else [args.panel]
    async with Link(config, "cli") as link:
        await _daemon_online(link)
        state_filter = link.topics.panel_states
        await link.subscribe([state_filter])
        before = _panel_states(link.topics, await link.messages(quiet_s=0.3))
        running = {p for p in panels if (before.get(p) or {}).get("session")}
        if args.all:
            link.publish(link.topics.daemon_set, dumps({"action": "stop_all"}))
        else:
            link.publish(link.topics.panel_set(args.panel), "OFF")
        # The daemon calls a plug unresponsive after confirm_timeout: wait a little longer.
        within = config.safety.confirm_timeout.total_seconds() + STOP_MARGIN_S
        confirmed, faults = await _off_outcome(link, state_filter, set(panels), within)
    stopped = [p for p in panels if p in confirmed and p in running]
    idle = [p for p in panels if p in confirmed and p not in running]
    if stopped:
        print("stopped: " + ", ".join(stopped))
    if idle:
        print("not running: " + ", ".join(idle) + " (plug off)")
    unconfirmed = [p for p in panels if p not in confirmed]
    for panel in unconfirmed:
        why = "redlight calls it unresponsive" if panel in faults else "no answer in time"
        print(
            f"not confirmed off: {panel} ({why}; redlight waited for a report on "
            f"{_report_topic(config, panel)}); it keeps sending OFF, check the plug",
            file=sys.stderr,
        )
    return EXIT_FAILED if unconfirmed else EXIT_OK


async def _control(config: Config, args: argparse.Namespace) -> int:
    """``extend``, ``pause``, ``resume``: the daemon's answer, and for a pause the plug's OFF."""
    _known_panel(config, args.panel)
    body: dict[str, Any] = {"action": args.command, "request_id": f"cli-{secrets.token_hex(4)}"}
    if args.command == "extend":
        body["by"] = _with_unit(args.by, "by")
    async with Link(config, "cli") as link:
        state_topic = link.topics.panel_state(args.panel)
        event = _answer(await _ask(link, args.panel, body, also=state_topic))
        if event is None:
            return EXIT_FAILED
        if args.command == "pause":
            within = config.safety.confirm_timeout.total_seconds() + STOP_MARGIN_S
            off = await link.wait_for(
                lambda m: m.topic == state_topic and _json(m.payload).get("plug") == "off", within
            )
            return _paused(config, args.panel, event, confirmed=off is not None)
    print(_control_line(args.panel, event))
    return EXIT_OK


async def _ask(
    link: Link, panel: str, body: dict[str, Any], *, also: str | None = None
) -> Received | None:
    """Publish ``body`` to ``panel`` and wait for the event that answers its request id
    (listening on ``also`` too, from before it went out): a start's and a control's answer."""
    await _daemon_online(link)
    event_topic = link.topics.panel_event(panel)
    await link.subscribe([event_topic] if also is None else [event_topic, also])
    await link.messages(quiet_s=0.2)  # let the subscriptions settle
    link.publish(link.topics.panel_set(panel), dumps(body))
    rid = body["request_id"]
    return await link.wait_for(
        lambda m: m.topic == event_topic and _json(m.payload).get("request_id") == rid,
        ANSWER_TIMEOUT_S,
    )


def _with_unit(text: str, what: str) -> float:
    """A duration from the command line, in seconds; a bare number is refused (minutes or
    seconds? Home Assistant counts minutes where JSON counts seconds)."""
    if text.strip().replace(".", "", 1).isdigit():
        raise UserError(
            f"{what}: give a unit, e.g. {text.strip()}m for minutes or {text.strip()}s for "
            "seconds (a bare number is ambiguous)"
        )
    try:
        return parse_duration(text).total_seconds()
    except ValueError as error:
        raise UserError(f"{what}: {error}") from None


def _control_line(panel: str, event: dict[str, Any]) -> str:
    """What an extension or a resume did, as the daemon said it."""
    until = str(event.get("ends_at") or "")[11:19]
    if event.get("event_type") == "session_resumed":
        left = format_duration(float(event.get("remaining_s", 0)))
        return f"resumed {panel}: {left} left, until {until}"
    total = format_duration(float(event.get("duration_s", 0)))
    line = f"extended {panel} by {format_duration(float(event.get('by_s', 0)))}: {total} in all"
    if not until:
        return line + " (paused: the end moves with the resume)"
    line += f", until {until}"
    if "failsafe_s" in event:
        line += f"; the plug's own timer is re-armed for {format_duration(event['failsafe_s'])}"
    return line


def _paused(config: Config, panel: str, event: dict[str, Any], *, confirmed: bool) -> int:
    """A pause is done once the plug confirmed OFF; said otherwise, and exit 1."""
    left = format_duration(float(event.get("remaining_s", 0)))
    by = str(event.get("resume_by", ""))[11:19]
    if not confirmed:
        print(
            f"not confirmed off: {panel} (paused, but redlight waited for a report on "
            f"{_report_topic(config, panel)}); it keeps sending OFF, check the plug",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(f"paused {panel}: off, {left} left; 'redlight resume {panel}' before {by}, or it ends")
    return EXIT_OK


def _known_panel(config: Config, panel: str | None) -> None:
    if panel is not None and panel not in config.panels:
        raise UserError(
            f"there is no panel {panel!r} in the config (panels: {', '.join(config.panels)})"
        )


def _panel_states(topics: Topics, received: Sequence[Received]) -> dict[str, dict[str, Any]]:
    """Panel id -> its latest state among ``received``."""
    return {
        m.topic.split("/")[-2]: _json(m.payload)
        for m in received
        if topic_matches_sub(topics.panel_states, m.topic)
    }


async def _off_outcome(
    link: Link, state_filter: str, panels: set[str], within_s: float
) -> tuple[set[str], set[str]]:
    """Which panels' plugs confirmed OFF (a state with no session and the plug off), and which
    the daemon marked as a fault instead, within ``within_s``."""
    confirmed: set[str] = set()
    faults: set[str] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while panels - confirmed - faults and loop.time() < deadline:
        message = await link.wait_for(
            lambda m: topic_matches_sub(state_filter, m.topic), deadline - loop.time()
        )
        if message is None:
            break
        panel, state = message.topic.split("/")[-2], _json(message.payload)
        if panel not in panels or state.get("session") is not None:
            continue
        if state.get("plug") == "off":
            confirmed.add(panel)
            faults.discard(panel)
        elif state.get("state") == "fault":
            faults.add(panel)
    return confirmed, faults


def _report_topic(config: Config, panel: str) -> str:
    plug = build_plug(panel, config.panels[panel].plug, base_topic=config.mqtt.base_topic)
    return plug.report_topic


def _off_panels(config: Config, args: argparse.Namespace) -> list[str]:
    """The panels ``off`` switches: ``--all``, or the ones named (each one known)."""
    if args.all and args.panels:
        raise UserError("name panels to switch off, or use --all, not both")
    if args.all:
        return list(config.panels)
    if not args.panels:
        raise UserError(
            "name the panels to switch off (e.g. 'redlight off hip_left'), or use --all "
            f"(panels: {', '.join(config.panels)})"
        )
    for panel in args.panels:
        _known_panel(config, panel)
    return list(dict.fromkeys(args.panels))


async def _off(config: Config, panels: Sequence[str]) -> int:
    """Safety rule 9 without the daemon: the plugs OFF (every one, or those named), straight
    to the plugs."""
    base = config.mqtt.base_topic
    plugs = {key: build_plug(key, config.panels[key].plug, base_topic=base) for key in panels}
    async with Link(config, "off") as link:
        filters = sorted({t for plug in plugs.values() for t in plug.subscriptions})
        await link.subscribe(filters)
        await link.messages(quiet_s=0.3)
        for plug in plugs.values():
            for message in plug.turn_off() + plug.ask_state():
                link.client.publish(message)
        waiting = set(plugs)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(3.0, 2 * config.safety.confirm_timeout.total_seconds())
        while waiting and loop.time() < deadline:
            seen = await link.wait_for(lambda m: True, deadline - loop.time())
            if seen is None:
                break
            for key in list(waiting):
                report = plugs[key].read(seen.topic, seen.payload)
                if isinstance(report, PlugState) and not report.on:
                    waiting.discard(key)
    confirmed = sorted(set(plugs) - waiting)
    sent = _plural(len(plugs), "plug")
    print(f"OFF sent to {sent}; confirmed off: {', '.join(confirmed) or 'none'}")
    if waiting:
        print(f"not confirmed (check them): {', '.join(sorted(waiting))}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
