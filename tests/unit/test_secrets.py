"""Secret references in manifests (`valueFrom: {env|file}`): resolved at load time,
applied to their target, and found nowhere else: not in plans, stored specs, the
cache of validated trees, reprs or error messages."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import re
import stat
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler import diff
from reconciler.engine import Engine, Planned
from reconciler.manifests import Cache, Issue, ManifestError, ParseMemo, load
from reconciler.model import (
    SENSITIVE,
    Action,
    Change,
    DesiredState,
    PrepareContext,
    ProviderSettings,
    Sensitive,
    SpecError,
)
from reconciler.providers.files import FileProvider, FileSpec
from reconciler.registry import Registry
from reconciler.store import SqliteStore
from reconciler.templates import WITHHELD

SECRET = "s3cr3t-Zq7-not-a-real-password"
ROTATED = "r0tated-Kp2-not-a-real-password"
ENV = "RECONCILER_TEST_DB_PASSWORD"


@dataclass
class Tree:
    config: Path
    root: Path
    state: Path
    secrets: Path
    registry: Registry

    def write(self, name: str, text: str) -> Path:
        path = self.config / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = textwrap.dedent(text).lstrip("\n")
        path.write_text(
            text.replace("$ROOT", str(self.root)).replace("$SECRETS", str(self.secrets))
        )
        return path

    def cache(self, *, write: bool = True) -> Cache:
        return Cache(self.state / "cache", self.registry.fingerprint(), write=write)

    def load(self, **options: object) -> DesiredState:
        return load(self.config, self.registry, **options)  # type: ignore[arg-type]

    def issues(self) -> list[Issue]:
        with pytest.raises(ManifestError) as info:
            self.load()
        text = str(info.value)
        assert SECRET not in text and ROTATED not in text
        return info.value.issues

    def state_bytes(self) -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in self.state.rglob("*") if p.is_file()}


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Tree:
    for name in ("root", "config", "secrets"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv(ENV, SECRET)
    registry = Registry.discover(ProviderSettings(roots=(str(tmp_path / "root"),)))
    return Tree(
        tmp_path / "config",
        tmp_path / "root",
        tmp_path / "state",
        tmp_path / "secrets",
        registry,
    )


TEMPLATE = "user={{ db.user }}\npassword={{ db.password }}\nkeys={{ keys | join(',') }}\n"
APP = f"""
apiVersion: reconciler/v1
kind: File
metadata:
  name: app
spec:
  path: $ROOT/app.ini
  template: app.ini.j2
  vars:
    db:
      user: app
      password:
        valueFrom: {{env: {ENV}}}
    keys:
      - plain
      - valueFrom: {{file: $SECRETS/api-key}}
"""
KEY = """
apiVersion: reconciler/v1
kind: File
metadata:
  name: key
spec:
  path: $ROOT/tls.key
  content: {valueFrom: {file: $SECRETS/tls.key}}
"""
PEM = f"-----BEGIN KEY-----\n{SECRET}\n-----END KEY-----\n"


def write_app(tree: Tree) -> None:
    tree.write("app.ini.j2", TEMPLATE)
    tree.write("app.yaml", APP)
    (tree.secrets / "api-key").write_text("api-" + SECRET + "\n")  # as `echo` writes it


def write_key(tree: Tree) -> None:
    tree.write("key.yaml", KEY)
    (tree.secrets / "tls.key").write_text(PEM)


def spec_of(state: DesiredState, rid: str) -> FileSpec:
    spec = state.resources[rid].spec
    assert isinstance(spec, FileSpec)
    return spec


# --- resolution -----------------------------------------------------------------


def test_env_and_file_references_in_vars_are_rendered_into_the_content(tree: Tree) -> None:
    write_app(tree)
    spec = spec_of(tree.load(), "File/app")
    # a file's trailing newline is dropped for a value; depth and lists are searched
    assert spec.content == f"user=app\npassword={SECRET}\nkeys=plain,api-{SECRET}\n"
    assert isinstance(spec.content, Sensitive) and spec.sensitive
    assert SECRET not in repr(spec) and SENSITIVE in repr(spec)
    # the references stay in the spec, the values do not
    assert spec.vars == {
        "db": {"user": "app", "password": {"valueFrom": {"env": ENV}}},
        "keys": ["plain", {"valueFrom": {"file": f"{tree.secrets}/api-key"}}],
    }


def test_a_whole_secret_file_as_content_is_kept_byte_for_byte(tree: Tree) -> None:
    write_key(tree)
    spec = spec_of(tree.load(), "File/key")
    assert spec.content == PEM and spec.sensitive


def test_content_from_env(tree: Tree) -> None:
    tree.write(
        "a.yaml",
        f"""
        apiVersion: reconciler/v1
        kind: File
        metadata: {{name: a}}
        spec: {{path: $ROOT/a, content: {{valueFrom: {{env: {ENV}}}}}}}
        """,
    )
    assert spec_of(tree.load(), "File/a").content == SECRET


def test_a_template_without_secrets_and_plain_content_are_not_sensitive(tree: Tree) -> None:
    tree.write("t.j2", "x={{ x }}\n")
    tree.write(
        "a.yaml",
        """
        apiVersion: reconciler/v1
        kind: File
        metadata: {name: a}
        spec: {path: $ROOT/a, template: t.j2, vars: {x: {nested: 1}}}
        ---
        apiVersion: reconciler/v1
        kind: File
        metadata: {name: b}
        spec: {path: $ROOT/b, content: hello}
        """,
    )
    state = tree.load()
    assert not spec_of(state, "File/a").sensitive and not spec_of(state, "File/b").sensitive
    assert spec_of(state, "File/a").content == "x={'nested': 1}\n"


# --- errors ---------------------------------------------------------------------


def ref_doc(value: str, field: str = "content") -> str:
    return f"""
    apiVersion: reconciler/v1
    kind: File
    metadata:
      name: a
    spec:
      path: $ROOT/a
      {field}: {value}
    """


@pytest.mark.parametrize(
    ("value", "field", "message"),
    [
        (
            "{valueFrom: {env: RECONCILER_TEST_UNSET_VARIABLE}}",
            "spec.content.valueFrom.env",
            "environment variable RECONCILER_TEST_UNSET_VARIABLE is not set",
        ),
        (
            "{valueFrom: {env: 'not a name'}}",
            "spec.content.valueFrom.env",
            "expected an environment variable name, found 'not a name'",
        ),
        (
            "{valueFrom: {file: $SECRETS/missing}}",
            "spec.content.valueFrom.file",
            r"cannot read \$SECRETS/missing: No such file or directory",
        ),
        (
            "{valueFrom: {file: relative/path}}",
            "spec.content.valueFrom.file",
            "expected an absolute path such as /run/secrets/db, found 'relative/path'",
        ),
        ("{valueFrom: {file: $SECRETS}}", "spec.content.valueFrom.file", "not a regular file"),
        (
            "{valueFrom: {env: X, file: /x}}",
            "spec.content.valueFrom",
            "expected exactly one of env: NAME or file: /path",
        ),
        (
            "{valueFrom: {vault: x}}",
            "spec.content.valueFrom",
            "expected exactly one of env: NAME or file: /path",
        ),
        (
            "{valueFrom: {env: X}, extra: 1}",
            "spec.content",
            "valueFrom must be alone in its mapping, found also extra",
        ),
        ("{some: mapping}", "spec.content", r"expected text or a secret reference"),
        ("12", "spec.content", r"expected text or a secret reference .*, found int"),
    ],
)
def test_bad_references_name_file_line_and_field(
    tree: Tree, value: str, field: str, message: str
) -> None:
    tree.write("a.yaml", ref_doc(value))
    [issue] = tree.issues()
    assert (issue.file, issue.line, issue.field) == ("a.yaml", 7, field)
    assert re.search(message, issue.message.replace(str(tree.secrets), "$SECRETS")), issue


def test_a_reference_deep_in_vars_is_reported_on_its_own_line(tree: Tree) -> None:
    tree.write("t.j2", "{{ db.password }}")
    tree.write(
        "a.yaml",
        """
        apiVersion: reconciler/v1
        kind: File
        metadata:
          name: a
        spec:
          path: $ROOT/a
          template: t.j2
          vars:
            db:
              user: app
              password:
                valueFrom:
                  env: DB_PASSWORD_NOT_SET_HERE
        """,
    )
    [issue] = tree.issues()
    assert str(issue) == (
        "a.yaml:13: spec.vars.db.password.valueFrom.env: "
        "environment variable DB_PASSWORD_NOT_SET_HERE is not set"
    )


def test_empty_secrets_are_refused(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "")
    (tree.secrets / "empty").write_text("")
    tree.write("a.yaml", ref_doc(f"{{valueFrom: {{env: {ENV}}}}}"))
    tree.write(
        "b.yaml", ref_doc("{valueFrom: {file: $SECRETS/empty}}").replace("name: a", "name: b")
    )
    # a value from a file loses its trailing line breaks: nothing is left of this one
    (tree.secrets / "newline").write_text("\n")
    tree.write("t.j2", "{{ v }}")
    tree.write(
        "c.yaml",
        """
        apiVersion: reconciler/v1
        kind: File
        metadata: {name: c}
        spec:
          path: $ROOT/c
          template: t.j2
          vars: {v: {valueFrom: {file: $SECRETS/newline}}}
        """,
    )
    issues = tree.issues()
    assert [(i.file, i.line, i.field, i.message) for i in issues] == [
        ("a.yaml", 7, "spec.content.valueFrom", "the secret is empty"),
        ("b.yaml", 7, "spec.content.valueFrom", "the secret is empty"),
        ("c.yaml", 7, "spec.vars.v.valueFrom", "the secret is empty"),
    ]


def test_a_fifo_is_refused_without_blocking_the_load(tree: Tree) -> None:
    os.mkfifo(tree.secrets / "fifo")
    tree.write("a.yaml", ref_doc("{valueFrom: {file: $SECRETS/fifo}}"))
    [issue] = tree.issues()
    assert issue.message.endswith("fifo is not a regular file")


def test_a_template_error_quoting_a_secret_does_not_show_it(tree: Tree) -> None:
    # Jinja names a missing key in its message: here the key is the secret
    tree.write("t.j2", "{{ {}[password] }}\n")
    tree.write(
        "a.yaml",
        f"""
        apiVersion: reconciler/v1
        kind: File
        metadata: {{name: a}}
        spec:
          path: $ROOT/a
          template: t.j2
          vars: {{password: {{valueFrom: {{env: {ENV}}}}}}}
        """,
    )
    [issue] = tree.issues()  # (asserts no secret in the whole error text)
    assert issue.field == "spec.template"
    # a secret in scope: the cause's class, never a message (it could quote a
    # slice or any other transformation of the secret; decision 0055)
    assert issue.message == f"t.j2:1: UndefinedError {WITHHELD}"


def test_a_provider_error_after_resolving_is_masked_by_the_loader(tree: Tree) -> None:
    # a secret referenced by a File under a path outside the roots: prepare fails
    # after resolving; whatever a provider says, the loader masks resolved values
    ctx = PrepareContext(tree.config / "a.yaml", tree.config)
    secret = ctx.secret({"valueFrom": {"env": ENV}}, ("x",))
    assert secret == SECRET and ctx.resolved == [SECRET]
    assert (
        ctx.mask(f"bad value {SECRET!r} and {SECRET}") == f"bad value '{SENSITIVE}' and {SENSITIVE}"
    )
    with pytest.raises(SpecError) as info:
        ctx.secret({"valueFrom": {"env": "NOT_SET_ANYWHERE_42"}}, ("vars", "a", 0))
    assert info.value.path == ("vars", "a", 0, "valueFrom", "env")
    assert info.value.field == "vars.a.0.valueFrom.env"


def test_a_sensitive_value_is_never_pickled_and_copies_are_itself() -> None:
    value = Sensitive(SECRET, "sensitive:hmac-sha256:00")
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(value)
    assert copy.copy(value) is value and copy.deepcopy(value) is value
    assert repr(value) == repr(SENSITIVE) and f"{value}" == SECRET
    assert type(value[:3]) is str


# --- dumps, hashes and digests ----------------------------------------------------


def test_the_dumped_spec_holds_a_keyed_digest_not_the_secret(tree: Tree) -> None:
    write_app(tree)
    write_key(tree)
    state = tree.load(cache=tree.cache())
    for rid in ("File/app", "File/key"):
        spec = spec_of(state, rid)
        for dumped in (spec.model_dump_json(by_alias=True), spec.model_dump_json(), str(spec)):
            assert SECRET not in dumped
        data = json.loads(spec.model_dump_json(by_alias=True))
        assert re.fullmatch(r"sensitive:hmac-sha256:[0-9a-f]{32}", data["content"])
        # not a plain hash of the secret or of the content
        for plain in (SECRET, spec.text):
            assert hashlib.sha256(plain.encode()).hexdigest()[:32] not in data["content"]
        # it reads back (for deletion) with the path intact
        back = FileSpec.model_validate_json(
            spec.model_dump_json(by_alias=True), context={"prepared": True}
        )
        assert back.path == spec.path


def test_a_rotated_secret_changes_the_spec_hash_and_the_same_one_keeps_it(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_app(tree)
    first = tree.load(cache=tree.cache()).resources["File/app"].spec_hash
    again = tree.load(cache=tree.cache()).resources["File/app"].spec_hash
    assert again == first  # the same key from the state directory: comparable across runs
    monkeypatch.setenv(ENV, ROTATED)
    rotated = tree.load(cache=tree.cache())
    assert rotated.resources["File/app"].spec_hash != first
    assert ROTATED in spec_of(rotated, "File/app").text
    # a file secret too, in the same (unchanged) tree
    (tree.secrets / "api-key").write_text("changed\n")
    assert tree.load(cache=tree.cache()).resources["File/app"].spec_hash != (
        rotated.resources["File/app"].spec_hash
    )


def test_the_digest_key_is_made_once_private_and_a_readonly_load_makes_none(
    tree: Tree,
) -> None:
    key_file = tree.state / "cache" / "digest.key"
    tree.write("plain.yaml", ref_doc("hello").replace("name: a", "name: plain"))
    tree.load(cache=tree.cache())
    assert not key_file.exists()  # made only when a secret needs it
    write_key(tree)
    readonly = tree.load(cache=tree.cache(write=False))
    assert not key_file.exists()
    tree.load(cache=tree.cache())
    key = key_file.read_bytes()
    assert len(key) == 32 and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    first = tree.load(cache=tree.cache())
    assert key_file.read_bytes() == key
    assert tree.load(cache=tree.cache(write=False)).resources == first.resources
    # without the state directory's key the digest differs: it is keyed, not a plain hash
    assert readonly.resources["File/key"].spec_hash != first.resources["File/key"].spec_hash


def test_a_tree_with_secrets_is_never_cached_and_a_new_value_is_picked_up(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_app(tree)
    first = tree.load(cache=tree.cache())
    assert not list((tree.state / "cache").glob("*.entry"))
    for data in tree.state_bytes().values():
        assert SECRET.encode() not in data
    monkeypatch.setenv(ENV, ROTATED)  # the same tree: a cache keyed by it would be stale
    second = tree.load(cache=tree.cache())
    assert ROTATED in spec_of(second, "File/app").text
    assert first.revision == second.revision


def test_the_parse_memo_keeps_files_without_secrets_only(tree: Tree) -> None:
    write_key(tree)
    tree.write("plain.yaml", ref_doc("hello").replace("name: a", "name: plain"))
    memo = ParseMemo()
    first = tree.load(memo=memo)
    (tree.secrets / "tls.key").write_text("rotated key\n")
    tree.write("other.yaml", ref_doc("x").replace("name: a", "name: o").replace("/a", "/o"))
    second = tree.load(memo=memo)
    assert second.resources["File/plain"] is first.resources["File/plain"]
    assert spec_of(second, "File/key").text == "rotated key\n"


# --- plans, applies and the store ---------------------------------------------------


async def test_plans_mask_sensitive_content_in_the_plan_itself(tree: Tree) -> None:
    write_app(tree)
    spec = spec_of(tree.load(), "File/app")
    provider = FileProvider(ProviderSettings(roots=(str(tree.root),)))
    create = provider.plan(spec, None)
    assert create.action is Action.CREATE
    assert create.changes == (Change("/content", None, SENSITIVE, sensitive=True),)
    target = tree.root / "app.ini"
    target.write_text(f"password={SECRET}-old\n")
    seen = await provider.observe(spec)
    update = provider.plan(spec, seen)
    assert update.action is Action.UPDATE
    assert update.changes == (Change("/content", SENSITIVE, SENSITIVE, sensitive=True),)
    planned = [Planned("File/app", "File", "drift", str(target), update)]
    text = diff.render_plan(planned, header="plan", colour=False)
    assert "content: (sensitive value changed)" in text
    as_json = json.dumps(diff.plan_json(planned, "rev"))
    for shown in (text, as_json, repr(update)):
        assert SECRET not in shown


@pytest.mark.parametrize("given_mode", [None, "0640"])
async def test_apply_writes_the_secret_privately_and_stores_none_of_it(
    tree: Tree, given_mode: str | None
) -> None:
    write_app(tree)
    write_key(tree)
    if given_mode is not None:
        tree.write("key.yaml", KEY.rstrip("\n") + f'\n  mode: "{given_mode}"\n')
    registry = tree.registry
    state = tree.load(cache=tree.cache())
    store = SqliteStore(tree.state)
    try:
        engine = Engine(registry, store)
        report = await engine.converge(state)
        assert report.ok, report
        assert (tree.root / "tls.key").read_text() == PEM
        assert SECRET in (tree.root / "app.ini").read_text()
        expected = int(given_mode or "0600", 8)
        assert stat.S_IMODE((tree.root / "tls.key").stat().st_mode) == expected

        # drift: the plan says which field, never the values
        (tree.root / "app.ini").write_text(f"password={SECRET}-by-hand\n")
        preview = await engine.preview(state)
        [drift] = [p for p in preview if p.action != "none"]
        assert drift.action == "drift" and drift.plan is not None
        assert drift.plan.changes == (Change("/content", SENSITIVE, SENSITIVE, sensitive=True),)
        healed = await engine.converge(state)
        assert healed.results["File/app"].action == "healed"
        store.flush()

        # the failed-then-same-spec comparison and deletion both work from the stored spec
        (tree.config / "key.yaml").unlink()
        smaller = tree.load(cache=tree.cache())
        pruned = await engine.converge(smaller)
        assert pruned.results["File/key"].action == "deleted"
        assert not (tree.root / "tls.key").exists()
        store.flush()
    finally:
        store.close()
    for path, data in tree.state_bytes().items():
        assert SECRET.encode() not in data, f"secret in {path}"


def test_the_model_re_exports_the_secrets_and_errors_modules() -> None:
    """`reconciler.secrets` and `reconciler.errors` sit below the model (decision 0125);
    the model, and so the SDK, hands out the very same objects."""
    from reconciler import errors, model, sdk, secrets

    for name in ("Sensitive", "SensitiveStr", "SecretSources", "SENSITIVE", "mask"):
        assert getattr(model, name) is getattr(secrets, name)
    for name in ("ProviderError", "TemporaryError", "PermanentError", "SpecError"):
        assert getattr(model, name) is getattr(errors, name) is getattr(sdk, name)
    assert sdk.Sensitive is secrets.Sensitive
    assert issubclass(errors.SpecError, ValueError)


def test_read_secret_reads_a_reference_under_the_allow_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.secrets import UNREAD_SECRET, SecretSources, keyed, read_secret

    secret = tmp_path / "db"
    secret.write_text(SECRET + "\n")
    allowed = SecretSources(dirs=(str(tmp_path),), env=("RECONCILER_TEST_*",))
    assert read_secret({"valueFrom": {"file": str(secret)}}, ("p",), allowed) == SECRET
    whole = read_secret({"valueFrom": {"file": str(secret)}}, ("p",), allowed, whole_file=True)
    assert whole == SECRET + "\n"
    monkeypatch.setenv(ENV, ROTATED)
    assert read_secret({"valueFrom": {"env": ENV}}, ("p",), allowed) == ROTATED
    form_only = SecretSources(form_only=True)
    assert read_secret({"valueFrom": {"env": "NOT_SET_ANYWHERE"}}, ("p",), form_only) == (
        UNREAD_SECRET
    )
    with pytest.raises(SpecError, match="outside the secret directories") as info:
        read_secret({"valueFrom": {"file": "/etc/hostname"}}, ("spec", "p"), allowed)
    assert info.value.path == ("spec", "p", "valueFrom", "file")
    sealed = keyed(SECRET, b"k" * 32)
    assert sealed == SECRET and repr(sealed) == repr(SENSITIVE)
    assert sealed.marker == keyed(SECRET, b"k" * 32).marker != keyed(SECRET, b"j" * 32).marker
