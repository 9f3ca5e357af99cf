"""The `Command` provider on real processes and real temporary directories.

Every command under test appends a line to a counter file, so "nothing ran" is
proved by the file, not by the provider's word. The provider is driven the way
the engine drives it: observe_many, plan, apply (and verify = observe + plan).
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from reconciler.model import (
    PREPARED,
    SENSITIVE,
    WITHHELD_MESSAGE,
    Action,
    Changes,
    PermanentError,
    Plan,
    PrepareContext,
    ProviderSettings,
    SpecError,
    TemporaryError,
)
from reconciler.providers import _process
from reconciler.providers.command import CommandProvider, CommandSpec

pytestmark = pytest.mark.timeout(30)

SECRET = "tok-3b9f0c1e77a2-not-a-real-secret"


class Tokens(Changes):
    """The engine's table of change tokens, moved on by hand as an apply would."""

    def bump(self, rid: str) -> None:
        self.set(rid, str(int(self.token(rid) or "0") + 1))


class Bench:
    """A state directory, a counter file and the provider over them."""

    def __init__(self, tmp: Path, changes: Any = None) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.counter = tmp / "counter"
        self.changes = changes
        self.provider = self.new_provider()

    def new_provider(self) -> CommandProvider:
        """A provider as a restarted daemon would build it: same state directory."""
        settings = ProviderSettings(
            allow_commands=True, state_dir=str(self.state), changes=self.changes or Changes()
        )
        return CommandProvider(settings)

    def spec(self, **data: Any) -> CommandSpec:
        data.setdefault("argv", ["sh", "-c", f"echo ran >> {self.counter}; echo done"])
        ctx = PrepareContext(manifest=self.tmp / "m.yaml", config_root=self.tmp)
        return self.provider.prepare(CommandSpec.model_validate(data), ctx)

    @property
    def runs(self) -> int:
        return len(self.counter.read_text().splitlines()) if self.counter.exists() else 0

    async def plan(self, spec: CommandSpec) -> Plan:
        [observed] = await self.provider.observe_many([spec])
        return self.provider.plan(spec, observed)

    async def converge(self, spec: CommandSpec) -> str | None:
        """Plan, apply when needed, then verify as the engine does."""
        plan = await self.plan(spec)
        note = None
        if not plan.empty:
            note = await self.provider.apply(spec, plan)
        assert (await self.plan(spec)).empty, "verify: the plan is empty after apply"
        return note


@pytest.fixture
def bench(tmp_path: Path) -> Bench:
    return Bench(tmp_path)


def fields(plan: Plan) -> set[str]:
    return {c.field for c in plan.changes}


# runs once per spec


async def test_runs_once_and_a_second_pass_runs_nothing(bench: Bench) -> None:
    spec = bench.spec()
    plan = await bench.plan(spec)
    assert plan.action is Action.CREATE and fields(plan) == {"/ran"}
    assert bench.runs == 0, "observe and plan run nothing"

    note = await bench.converge(spec)

    assert note == "exit 0: done"
    assert bench.runs == 1
    assert (await bench.plan(spec)).empty
    restarted = bench.new_provider()  # the record is on disk, not only in memory
    [observed] = await restarted.observe_many([spec])
    assert restarted.plan(spec, observed).empty
    assert bench.runs == 1
    [record] = list((bench.state / "command").iterdir())
    assert json.loads(record.read_text())["exit"] == 0


async def test_without_a_state_directory_the_record_is_in_memory(tmp_path: Path) -> None:
    provider = CommandProvider(ProviderSettings(allow_commands=True))
    spec = CommandSpec.model_validate({"argv": ["sh", "-c", f"echo x >> {tmp_path}/c"]})
    [observed] = await provider.observe_many([spec])
    await provider.apply(spec, provider.plan(spec, observed))
    [observed] = await provider.observe_many([spec])
    assert provider.plan(spec, observed).empty
    assert (tmp_path / "c").read_text() == "x\n"


async def test_a_changed_spec_runs_again(bench: Bench) -> None:
    await bench.converge(bench.spec())
    changed = bench.spec(argv=["sh", "-c", f"echo v2 >> {bench.counter}"])

    plan = await bench.plan(changed)

    assert plan.action is Action.CREATE
    await bench.converge(changed)
    assert bench.counter.read_text() == "ran\nv2\n"
    await bench.converge(changed)
    assert bench.runs == 2


async def test_delete_forgets_the_run(bench: Bench) -> None:
    spec = bench.spec()
    await bench.converge(spec)
    await bench.provider.delete(spec)
    await bench.provider.delete(spec)  # nothing to forget: not an error
    assert not (await bench.plan(spec)).empty
    assert bench.runs == 1, "delete runs nothing"


# guards


GUARDS: dict[str, tuple[str, Any]] = {
    # guard -> (field, value); each says done once `made` exists and `gone` does not
    "creates": ("creates", "{t}/made"),
    "removes": ("removes", "{t}/gone"),
    "unless": ("unless", ["test", "-e", "{t}/made"]),
    "onlyIf": ("onlyIf", "test -e {t}/gone"),
}


def guard_spec(bench: Bench, guard: str) -> CommandSpec:
    name, value = GUARDS[guard]
    t = bench.tmp
    value = [v.format(t=t) for v in value] if isinstance(value, list) else value.format(t=t)
    argv = ["sh", "-c", f"echo ran >> {bench.counter}; touch {t}/made; rm -f {t}/gone"]
    return bench.spec(argv=argv, **{name: value})


def undo(bench: Bench) -> None:
    """Out of band: the state the command makes, undone."""
    (bench.tmp / "made").unlink(missing_ok=True)
    (bench.tmp / "gone").touch()


@pytest.mark.parametrize("guard", GUARDS)
async def test_a_guard_that_says_done_runs_nothing(bench: Bench, guard: str) -> None:
    (bench.tmp / "made").touch()
    spec = guard_spec(bench, guard)

    assert (await bench.plan(spec)).empty
    assert bench.runs == 0


@pytest.mark.parametrize("guard", GUARDS)
async def test_a_guard_that_says_needed_runs_and_its_flip_is_drift(
    bench: Bench, guard: str
) -> None:
    undo(bench)
    spec = guard_spec(bench, guard)

    plan = await bench.plan(spec)
    assert plan.action is Action.CREATE and fields(plan) == {f"/{guard}"}
    await bench.converge(spec)
    assert bench.runs == 1
    await bench.converge(spec)
    assert bench.runs == 1, "the guard now says done"

    undo(bench)  # the guard flips back; the next drift check sees it
    drift = await bench.plan(spec)
    assert drift.action is Action.UPDATE and fields(drift) == {f"/{guard}"}
    await bench.converge(spec)  # healed
    assert bench.runs == 2


async def test_guards_must_all_agree(bench: Bench) -> None:
    (bench.tmp / "made").touch()
    spec = bench.spec(creates=str(bench.tmp / "absent"), unless=["test", "-e", str(bench.tmp)])
    assert (await bench.plan(spec)).empty  # creates says needed, unless says done


async def test_a_command_that_leaves_its_guard_unsatisfied_does_not_verify(bench: Bench) -> None:
    spec = bench.spec(creates=str(bench.tmp / "never-made"))
    await bench.provider.apply(spec, await bench.plan(spec))
    assert not (await bench.plan(spec)).empty  # the engine reports: did not converge


async def test_guards_run_concurrently_and_answer_in_order(bench: Bench) -> None:
    specs = [bench.spec(unless=f"sleep 0.3; exit {i % 2}") for i in range(40)]
    started = time.monotonic()
    observed = await bench.provider.observe_many(specs)
    assert time.monotonic() - started < 3.0, "40 guards of 0.3 s each ran concurrently"
    assert [o["needed"] if o else None for o in observed] == [i % 2 == 1 for i in range(40)]


# refreshOn


async def test_refresh_on_runs_again_after_each_apply_of_a_target(tmp_path: Path) -> None:
    tokens = Tokens()
    bench = Bench(tmp_path, tokens)
    spec = bench.spec(refreshOn=["File/app-config"])
    assert bench.provider.references(spec) == ((("refreshOn", 0), "File/app-config"),)
    await bench.converge(spec)
    assert bench.runs == 1

    tokens.bump("File/app-config")  # the config file was applied
    plan = await bench.plan(spec)
    assert plan.action is Action.UPDATE and fields(plan) == {"/refreshOn/0"}
    await bench.converge(spec)
    assert bench.runs == 2
    await bench.converge(spec)
    assert bench.runs == 2

    # a guard gates refresh runs: only when the service is "active"
    gated = bench.spec(refreshOn=["File/app-config"], onlyIf=["test", "-e", str(tmp_path / "on")])
    await bench.converge(gated)
    tokens.bump("File/app-config")
    assert (await bench.plan(gated)).empty
    (tmp_path / "on").touch()
    assert not (await bench.plan(gated)).empty


async def test_refresh_on_without_the_engine_table_runs_once(bench: Bench) -> None:
    provider = CommandProvider(ProviderSettings(allow_commands=True, state_dir=str(bench.state)))
    spec = bench.spec(refreshOn=["File/app-config"])
    [observed] = await provider.observe_many([spec])
    await provider.apply(spec, provider.plan(spec, observed))
    [observed] = await provider.observe_many([spec])
    assert provider.plan(spec, observed).empty


# failures


async def test_non_zero_exit_is_permanent_with_code_and_tail(bench: Bench) -> None:
    lines = "; ".join(f"echo line{i}" for i in range(40))
    spec = bench.spec(command=f"{lines}; echo boom >&2; exit 3", shell=True, argv=None)
    with pytest.raises(PermanentError) as caught:
        await bench.provider.apply(spec, await bench.plan(spec))
    message = str(caught.value)
    assert "exited with code 3" in message
    assert message.endswith("line39\nboom")
    assert "line5\n" not in message, "only the tail"
    assert not (await bench.plan(spec)).empty, "a failed run is not recorded"


async def test_exit_75_is_temporary(bench: Bench) -> None:
    spec = bench.spec(argv=["sh", "-c", "exit 75"])
    with pytest.raises(TemporaryError, match="exited with code 75 \\(no output\\)"):
        await bench.provider.apply(spec, await bench.plan(spec))


async def test_a_missing_program_or_cwd_is_permanent(bench: Bench) -> None:
    spec = bench.spec(argv=["no-such-program-here"])
    with pytest.raises(PermanentError, match="'no-such-program-here' not found on PATH"):
        await bench.provider.apply(spec, await bench.plan(spec))
    spec = bench.spec(cwd=str(bench.tmp / "nowhere"))
    with pytest.raises(PermanentError, match="nowhere: No such file or directory"):
        await bench.provider.apply(spec, await bench.plan(spec))
    guarded = bench.spec(unless=["no-such-guard"])
    with pytest.raises(PermanentError, match="guard unless could not start"):
        await bench.plan(guarded)


async def exited(pid: int, within: float = 5.0) -> None:
    """Wait until process `pid` (not necessarily our child) has exited."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_reader(pidfd, done.set)
    try:
        async with asyncio.timeout(within):
            await done.wait()
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


async def read_fifo(path: Path) -> str:
    return await asyncio.to_thread(path.read_text)


async def test_a_timeout_kills_the_whole_process_group(bench: Bench) -> None:
    pidfile = bench.tmp / "child.pid"
    # the child ignores SIGTERM: only the SIGKILL to the group ends it
    script = f"sh -c 'trap \"\" TERM; sleep 60' & echo $! > {pidfile}; wait"
    spec = bench.spec(argv=None, shell=True, command=script, timeout="500ms")
    started = time.monotonic()
    with pytest.raises(TemporaryError, match=r"timeout of 0.5 s \(its process group was killed\)"):
        await bench.provider.apply(spec, await bench.plan(spec))
    assert time.monotonic() - started < _process.KILL_GRACE + 2
    await exited(int(pidfile.read_text()))


async def test_a_guard_timeout_is_temporary(bench: Bench) -> None:
    spec = bench.spec(unless=["sleep", "30"], guardTimeout="200ms")
    with pytest.raises(TemporaryError, match="guard unless did not finish within"):
        await bench.plan(spec)


async def test_cancellation_kills_the_group(bench: Bench) -> None:
    fifo = bench.tmp / "pid"
    os.mkfifo(fifo)
    spec = bench.spec(argv=["sh", "-c", f"echo $$ > {fifo}; exec sleep 60"])
    task = asyncio.create_task(bench.provider.apply(spec, await bench.plan(spec)))
    pid = int(await read_fifo(fifo))  # the command started
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await exited(pid)


async def test_huge_output_is_bounded(bench: Bench) -> None:
    spec = bench.spec(argv=["sh", "-c", "head -c 30000000 /dev/zero | tr '\\0' x; echo; echo end"])
    result = await _process.run(spec.argv or [], env={"PATH": "/usr/bin:/bin"}, seconds=20)
    assert result.size == 30_000_005 and len(result.output) == _process.OUTPUT_LIMIT
    note = await bench.provider.apply(spec, await bench.plan(spec))
    assert note is not None and note.endswith("end") and len(note) < 600
    assert note.startswith("exit 0: (30000005 bytes of output, the last shown) …x")


async def test_a_background_child_holding_the_pipe_does_not_hang_the_run(bench: Bench) -> None:
    spec = bench.spec(argv=["sh", "-c", "sleep 30 & echo started"])
    started = time.monotonic()
    note = await bench.provider.apply(spec, await bench.plan(spec))
    assert note == "exit 0: started"
    assert time.monotonic() - started < 3


# secrets, environment, user


async def test_a_secret_is_never_shown(bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMD_TEST_TOKEN", SECRET)
    env = {"TOKEN": {"valueFrom": {"env": "CMD_TEST_TOKEN"}}, "PLAIN": "visible"}
    ok = bench.spec(argv=["sh", "-c", 'echo "token=$TOKEN plain=$PLAIN"'], env=env)
    failing = bench.spec(argv=["sh", "-c", 'echo "$TOKEN" >&2; exit 1'], env=env)
    sliced = bench.spec(argv=["sh", "-c", 'echo "${TOKEN#tok-}"'], env=env)

    note = await bench.provider.apply(ok, await bench.plan(ok))
    assert note == f"exit 0: token={SENSITIVE} plain=visible"
    with pytest.raises(PermanentError) as caught:
        await bench.provider.apply(failing, await bench.plan(failing))
    assert SECRET not in str(caught.value) and SENSITIVE in str(caught.value)
    assert await bench.provider.apply(sliced, await bench.plan(sliced)) == (
        f"exit 0: {WITHHELD_MESSAGE}"
    )

    stored = ok.model_dump_json(by_alias=True)
    assert SECRET not in stored and "sensitive:hmac-sha256:" in stored
    assert SECRET not in bench.provider.describe(ok) + repr(ok)
    for record in (bench.state / "command").iterdir():
        assert SECRET not in record.read_text()
    # the stored spec reads back (for a prune) and keys the same record
    back = CommandSpec.model_validate_json(stored, context=PREPARED)
    await bench.provider.delete(back)
    assert not (await bench.plan(ok)).empty


async def test_the_daemon_environment_is_not_passed_on(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECONCILER_API_TOKEN", "daemon-secret")
    spec = bench.spec(argv=["sh", "-c", "env | sort | tr '\\n' ' '"], env={"MINE": "1"})
    note = await bench.provider.apply(spec, await bench.plan(spec))
    assert note is not None and "MINE=1" in note and "PATH=" in note
    assert "RECONCILER_API_TOKEN" not in note


async def test_cwd(bench: Bench) -> None:
    spec = bench.spec(argv=["pwd"], cwd=str(bench.tmp))
    assert await bench.provider.apply(spec, await bench.plan(spec)) == f"exit 0: {bench.tmp}"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_user_runs_as_that_user_guards_too(bench: Bench) -> None:
    nobody = pwd.getpwnam("nobody")
    os.chmod(bench.tmp, 0o777)
    spec = bench.spec(
        argv=["sh", "-c", 'echo "$(id -u):$(id -g):$USER"'],
        user="nobody",
        onlyIf=["sh", "-c", f'test "$(id -u)" = {nobody.pw_uid}'],
    )
    note = await bench.provider.apply(spec, await bench.plan(spec))
    assert note == f"exit 0: {nobody.pw_uid}:{nobody.pw_gid}:nobody"
    unknown = bench.spec(user="no-such-user-x")
    with pytest.raises(PermanentError, match="no user 'no-such-user-x'"):
        await bench.provider.apply(unknown, await bench.plan(unknown))


# the run records


async def test_records_are_never_written_through_a_symlink(bench: Bench) -> None:
    elsewhere = bench.tmp / "elsewhere"
    elsewhere.mkdir()
    bench.state.mkdir()
    (bench.state / "command").symlink_to(elsewhere)
    spec = bench.spec()
    with pytest.raises(PermanentError, match=r"cannot record command runs in .*not a symlink"):
        await bench.plan(spec)
    with pytest.raises(PermanentError, match=r"cannot record command runs in .*not a symlink"):
        await bench.provider.apply(spec, Plan(Action.CREATE))
    assert bench.runs == 0, "refused before running"
    assert list(elsewhere.iterdir()) == []


# the spec


def test_describe_is_short_and_quoted(bench: Bench) -> None:
    provider = bench.provider
    assert provider.describe(bench.spec(argv=["echo", "a b", "$x"])) == "echo 'a b' '$x'"
    assert provider.describe(bench.spec(argv=None, shell=True, command="echo hi")) == (
        "sh -c 'echo hi'"
    )
    long = provider.describe(bench.spec(argv=["echo", "x" * 200]))
    assert len(long) == 60 and long.endswith("…")


INVALID_MODEL = [
    ({"argv": []}, ("argv",), "at least 1 item"),
    ({"argv": ["a\0b"]}, ("argv", 0), "NUL"),
    ({"argv": ["x"], "cwd": "relative"}, ("cwd",), "absolute path"),
    ({"argv": ["x"], "creates": "rel/x"}, ("creates",), "absolute path"),
    ({"argv": ["x"], "env": {"1BAD": "x"}}, ("env",), "environment variable names"),
    ({"argv": ["x"], "env": {"A": {"file": "/x"}}}, ("env",), "secret reference"),
    ({"argv": ["x"], "timeout": "soon"}, ("timeout",), "duration"),
    ({"argv": ["x"], "refreshOn": ["File"]}, ("refreshOn",), "Kind/name"),
    ({"argv": ["x"], "user": "a b"}, ("user",), "user name"),
    ({"argv": ["x"], "onlyif": ["true"]}, ("onlyif",), "Extra inputs"),
]


@pytest.mark.parametrize(("data", "loc", "message"), INVALID_MODEL)
def test_invalid_specs_are_rejected_with_the_field(
    data: dict[str, Any], loc: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        CommandSpec.model_validate(data)
    error = caught.value.errors()[0]
    assert error["loc"][: len(loc)] == loc
    assert message in str(caught.value)


INVALID_PREPARE = [
    ({}, "argv", "expected argv"),
    ({"command": "ls"}, "command", "only with shell: true"),
    ({"shell": True, "argv": ["ls"]}, "argv", "give command: a string"),
    ({"shell": True}, "command", "command: is required"),
    ({"argv": ["x"], "unless": " "}, "unless", "empty string"),
    (
        {"argv": ["x"], "env": {"T": {"valueFrom": {"env": "CMD_TEST_UNSET_X"}}}},
        "env.T.valueFrom.env",
        "is not set",
    ),
]


@pytest.mark.parametrize(("data", "field", "message"), INVALID_PREPARE)
def test_unusable_specs_are_rejected_at_load(
    tmp_path: Path, data: dict[str, Any], field: str, message: str
) -> None:
    provider = CommandProvider(ProviderSettings(allow_commands=True))
    ctx = PrepareContext(manifest=tmp_path / "m.yaml", config_root=tmp_path)
    with pytest.raises(SpecError, match=message) as caught:
        provider.prepare(CommandSpec.model_validate(data), ctx)
    assert caught.value.field == field
