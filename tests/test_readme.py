"""Every example of the README and of the pages under docs/ is executed: each ```python block runs for
real on tiny runs trained here (or as is, when it loads none), and every shell command (the ```bash blocks'
lines and the commands quoted inline) is checked against the argument parser that would read it (tt's own,
torchrun's, a script's), without running it. The links between the pages must lead somewhere."""

from __future__ import annotations

import argparse
import ast
import builtins
import importlib
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

pytestmark = pytest.mark.filterwarnings("ignore:the plan's action holds a stop token")


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return re.findall(r"^```(\S*)[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.S | re.M)


def pages() -> list[str]:
    """The README and every page under docs/, as paths from the repository's root."""
    return [README.name, *sorted(p.relative_to(ROOT).as_posix() for p in DOCS.glob("*.md"))]


def page_text(page: str) -> str:
    return (ROOT / page).read_text(encoding="utf-8")


def python_blocks() -> list[tuple[str, str]]:
    """(page, source) of every ```python block, the README's first."""
    return [(page, body) for page in pages() for lang, body in fenced_blocks(page_text(page)) if lang == "python"]


# ----------------------------------------------------------------------------- the Python examples

# Each block is recognized by the run directory it loads; the test gives it that run (trained here) and the
# names the page leaves to the reader (`obs` from the block above it, the goals g and g2). A block that loads
# none of them runs as is, and may read no name it does not define.
RUN_OF_BLOCK = {"pendulum": "runs/pm", "expert": "runs/expert", "goal": "runs/goal"}
AS_IS = "as-is"
GIVEN = {"pendulum": set(), "expert": {"tt", "obs"}, "goal": {"tt", "g", "g2"}, AS_IS: set()}
TINY = dict(n_layer=1, n_head=2, n_embd=16, batch_size=16, n_bins=20, n_transitions=3, max_steps=3, save_every=3,
            log_every=1, device="cpu", seed=0)


def block_kind(source: str) -> str | None:
    """The run a block loads (its kind), AS_IS for one that loads none, None for one that loads several."""
    kinds = [kind for kind, run in RUN_OF_BLOCK.items() if f'"{run}"' in source]
    return kinds[0] if len(kinds) == 1 else AS_IS if not kinds else None


def free_names(source: str) -> set[str]:
    """Names the block reads but neither binds nor imports (nor are builtins)."""
    loaded, bound = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return loaded - bound - set(dir(builtins))


def tiny_run(out: Path, dataset: str, **overrides) -> str:
    from tt.config import make_config
    from tt.train import train

    train(make_config("small", dataset=dataset, **TINY, **overrides), str(out), progress=False)
    return str(out)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("readme-runs")


@pytest.fixture(scope="module")
def pendulum_run(runs_dir, pendulum_medium):
    return tiny_run(runs_dir / "pm", "pendulum-medium")


@pytest.fixture(scope="module")
def expert_run(runs_dir):
    from tt.tasks import make_dataset

    make_dataset("pendulum-expert", episodes=4, seed=0, progress=False)
    return tiny_run(runs_dir / "expert", "pendulum-expert", action_discretizer="uniform")  # as the README trains it


@pytest.fixture(scope="module")
def goal_run(runs_dir):
    from tt.tasks import make_dataset

    make_dataset("pointmaze-fourrooms", episodes=3, seed=0, progress=False)
    return tiny_run(runs_dir / "goal", "pointmaze-fourrooms", goal_conditioned=True)


def test_every_python_block_has_a_test():
    blocks = python_blocks()
    for page, source in blocks:
        assert block_kind(source) is not None, f"a {page} python block loads several of " \
                                               f"{sorted(RUN_OF_BLOCK.values())}: give it a case here\n{source}"
    kinds = [block_kind(source) for page, source in blocks if page == README.name]
    assert sorted(kinds) == sorted(RUN_OF_BLOCK), f"README python blocks {kinds}, handled {sorted(RUN_OF_BLOCK)}: " \
                                                  "one block per use, one case per block"


def block_id(page: str, index: int, source: str) -> str:
    return f"{page}:{block_kind(source) or f'block{index}'}"


@pytest.mark.parametrize("index", range(len(python_blocks())),
                         ids=[block_id(page, i, source) for i, (page, source) in enumerate(python_blocks())])
def test_python_block_runs(index, request):
    import gymnasium as gym

    import tt

    page, source = python_blocks()[index]
    kind = block_kind(source)
    name = f"{page} python block {index} ({kind})"
    if kind is None:
        pytest.fail(f"no case for {name}:\n{source}")
    missing = free_names(source) - GIVEN[kind]
    assert not missing, f"{name} reads {sorted(missing)}, which it never defines"
    if kind == AS_IS:
        exec(compile(source, name, "exec"), {"__name__": f"docs_block_{index}"})
        return
    run = request.getfixturevalue(f"{kind}_run")
    quoted = f'"{RUN_OF_BLOCK[kind]}"'
    assert source.count(quoted) == 1, f"{quoted} not (or more than once) in {name}"
    source = source.replace(quoted, repr(run))
    given = {"tt": tt}
    if kind == "expert":  # the page's block above leaves `obs`: its 4 Pendulum environments, reset
        envs = gym.vector.SyncVectorEnv([lambda: gym.make("Pendulum-v1")] * 4,
                                        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        given["obs"] = envs.reset(seed=0)[0]
        envs.close()
    if kind == "goal":  # goal observations (x, y, vx, vy) in two of the maze's rooms
        from tt.checkpoint import load_run

        O = load_run(run)[0].config.observation_dim
        given["g"], given["g2"] = np.zeros(O), np.zeros(O)
        given["g"][:2], given["g2"][:2] = (1.0, 1.0), (-2.0, 2.0)
    namespace = {"__name__": f"docs_block_{index}", **{k: v for k, v in given.items() if k in GIVEN[kind]}}
    exec(compile(source, name, "exec"), namespace)

    planner = namespace["planner"]
    assert isinstance(planner, tt.Planner)
    if kind == "pendulum":
        assert namespace["action"].shape == (4, 1) and np.isfinite(namespace["action"]).all()
        assert len(namespace["plan"]) == 4 and planner.stats["plans"] >= 200 * 4
    elif kind == "expert":
        assert planner.config.objective == "likelihood"
        assert namespace["action"].shape == (4, 1) and np.isfinite(namespace["action"]).all()
    elif kind == "goal":  # planner.set_goal(g2, env=1) left environment 0 on g: both plan
        assert planner.config.objective == "likelihood" and planner.model.config.goal_conditioned
        actions = planner.act(np.zeros((2, planner.O)))
        assert actions.shape == (2, planner.A) and np.isfinite(actions).all()


# ----------------------------------------------------------------------------- the shell commands

PLACEHOLDERS = {"<id>": "pendulum-medium", "RUN": "runs/pm", "N": "10", "OUT_DIR": "gpu-out",
                "CRITIC": "runs/pm-critic"}
# Commands no parser here can check, and why; the entry's callable says when the skip applies.
SKIPPED = {
    "./scripts/setup.sh": ("builds the virtual environment: a shell script without options", lambda rest: True),
    "pytest": ("pytest's own command line", lambda rest: True),
    "pip": ("pip's own command line", lambda rest: True),
    "benchmarks/gpu.sh": ("a shell script taking an output directory, for GPU machines", lambda rest: len(rest) <= 1),
    "tests/compile_triton.py": ("its module sets environment variables on import; no arguments given",
                                lambda rest: not rest),
    "benchmarks/scaling.py": ("imports benchmarks' helpers by path; no arguments given", lambda rest: not rest),
}


def words_of(text: str) -> list[list[str]]:
    """The commands of one shell line (&&, ||, ; and | chains), as argv lists, placeholders filled in."""
    unknown = set(re.findall(r"<\w+>", text)) - set(PLACEHOLDERS)
    assert not unknown, f"unknown placeholder(s) {sorted(unknown)} in {text!r}: add a value to PLACEHOLDERS"
    for placeholder, value in PLACEHOLDERS.items():
        if placeholder.startswith("<"):
            text = text.replace(placeholder, value)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, command = [], []
    for word in [*lexer, ";"]:
        if word in ("&&", "||", ";", "|"):
            if command:
                commands.append(command)
            command = []
        else:
            assert not re.fullmatch(r"[A-Z][A-Z_]*", word) or word in PLACEHOLDERS, \
                f"placeholder {word!r} in {text!r}: add a value to PLACEHOLDERS"
            command.append(PLACEHOLDERS.get(word, word))
    return commands


def alternatives(text: str) -> list[str]:
    """Usage notation of inline commands spelled out: `[X]` with and without X, `a|b` as a and as b."""
    group = re.search(r"\[([^\]]*)\]", text)
    if group:
        head, tail = text[: group.start()], text[group.end():]
        return alternatives(head + tail) + alternatives(head + group.group(1) + tail)
    choice = re.search(r"(\S*)\|(\S*)", text)
    if choice:
        head, tail = text[: choice.start()], text[choice.end():]
        return [v for part in choice.groups() for v in alternatives(head + part + tail)]
    return [text]


def commands_of(text: str) -> list[tuple[str, str]]:
    """(where, text) of every command line of a page: `fenced` lines (of ```bash blocks) are whole commands,
    `inline` ones (quoted in the prose, tt's usage notation spelled out) may be fragments that name a
    command's flags. Schematic ones (`torchrun ... -m tt COMMAND ...`) are left out."""
    out = []
    for lang, body in fenced_blocks(text):
        if lang == "bash":
            for line in body.replace("\\\n", " ").splitlines():
                if line.strip() and not line.strip().startswith("#"):
                    out.append(("fenced", line.strip()))
    prose = re.sub(r"^```.*?^```[ \t]*$", "", text, flags=re.S | re.M)
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())
        if re.match(r"(tt|torchrun|python|bash|pip|\.venv/bin/\S+)( |$)", span) and "..." not in span:
            out += [("inline", v) for v in (alternatives(span) if span.startswith("tt ") else [span])]
    return list(dict.fromkeys(out))  # each once: the prose names `tt eval` several times


def page_commands() -> list[tuple[str, str, str]]:
    """(page, where, text) of every command line of the README and the docs pages."""
    return [(page, where, line) for page in pages() for where, line in commands_of(page_text(page))]


@pytest.mark.parametrize("page", pages())
def test_fenced_blocks_are_python_bash_or_plain(page):
    langs = {lang for lang, _ in fenced_blocks(page_text(page))}
    assert langs <= {"python", "bash", ""}, f"fenced block language(s) {sorted(langs - {'python', 'bash', ''})} " \
                                            f"in {page}: teach this test to check them"


def test_commands_are_found():
    commands = [(page, where, argv) for page, where, line in page_commands() for argv in words_of(line)]
    fenced = [argv for page, where, argv in commands if where == "fenced"]
    assert len(fenced) >= 15 and sum(argv[0] == "torchrun" for argv in fenced) == 5
    assert any(argv[0] == "tt" for page, where, argv in commands if where == "inline")
    assert any(page == README.name and argv[0] == "tt" for page, where, argv in commands if where == "fenced")


def program(argv: list[str]) -> tuple[str, list[str]]:
    """What a command runs (`tt`, a module, a script, a program) and its arguments."""
    name = Path(argv[0]).name
    if name == "tt":
        return "tt", argv[1:]
    if name.startswith("python"):
        if argv[1] in ("-m", "-c"):
            return ("python -c" if argv[1] == "-c" else argv[2]), argv[3:]
        return argv[1], argv[2:]
    if name == "bash":
        return argv[1], argv[2:]
    return argv[0], argv[1:]


def descend(parser: argparse.ArgumentParser, words: list[str]) -> tuple[argparse.ArgumentParser, list[str], list[str]]:
    """The (sub)parser that reads `words` after their command path, the path, and the words after it."""
    path = []
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or not words or words[0] not in sub.choices:
            return parser, path, words
        parser, path, words = sub.choices[words[0]], [*path, words[0]], words[1:]


def parse(parser: argparse.ArgumentParser, args: list[str], line: str) -> argparse.Namespace:
    try:
        return parser.parse_args(args)
    except SystemExit as e:
        pytest.fail(f"the command {line!r} fails its parser {parser.prog!r} (exit {e.code}; args {args})")


def check_exact_options(parser: argparse.ArgumentParser, words: list[str], line: str) -> None:
    """Options by their full names (argparse would also take an abbreviation)."""
    for word in words:
        if word == "--":
            return
        if word.startswith("-") and not re.fullmatch(r"-\d.*", word):
            assert word.split("=")[0] in parser._option_string_actions, \
                f"{word!r} is not an option of {parser.prog!r} (an abbreviation?) in {line!r}"


def check_tt(args: list[str], where: str, line: str) -> None:
    from tt.cli import build_parser
    from tt.tasks import builtin_names

    parser = build_parser()
    sub, path, rest = descend(parser, args)
    if where == "inline":  # a fragment: the subcommand, then its flags with the required ones filled in
        assert path, f"{args[0] if args else ''!r} is not a tt command, in {line!r}"
        if not rest:
            return
        for action in sub._actions:
            if action.required and action.option_strings and not set(action.option_strings) & set(rest):
                rest = [*rest, action.option_strings[0], {"dataset": "pendulum-medium"}.get(action.dest, "runs/x")]
        for group in sub._mutually_exclusive_groups:  # one of them required: its first, unless one is given
            options = [o for a in group._group_actions for o in a.option_strings]
            if group.required and not set(options) & set(rest):
                rest = [*rest, options[0], "runs/x"]
    parsed = parse(parser, path + rest, line)
    check_exact_options(sub, rest, line)
    names = [getattr(parsed, "dataset", None), getattr(parsed, "name", None)]
    for name in filter(None, names):
        assert "/" in name or name in builtin_names(), f"{name!r} is neither built in nor a Minari id, in {line!r}"


class Parsed(Exception):
    """Raised by a script's parse_args in place of running the script."""


def check_script(key: str, args: list[str], line: str, monkeypatch) -> None:
    """A module or script whose main() builds an argparse parser: its arguments parsed, nothing run."""
    original = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(sys, "path", list(sys.path))  # a script may add its folder
    if key.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"readme_{Path(key).stem}", ROOT / key)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(key)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    monkeypatch.setattr(sys, "argv", [key, *args])
    try:
        module.main()
    except Parsed:
        return
    except SystemExit as e:
        pytest.fail(f"the command {line!r} fails {key}'s parser (exit {e.code})")
    pytest.fail(f"{key}'s main() returned without parsing arguments")


# checked by check_script
SCRIPTS = {"tt.eval.goal", "tt.eval.goal_dependence", "scripts/train_policies.py", "benchmarks/profile_train.py"}


def torchrun_args(argv: list[str], line: str) -> list[str]:
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()
    parsed = parse(parser, argv[1:], line)
    assert parsed.module and parsed.training_script == "tt", f"torchrun does not run `-m tt` in {line!r}"
    check_exact_options(parser, argv[1: argv.index("-m")], line)
    return list(parsed.training_script_args)


COMMANDS = page_commands()


@pytest.mark.parametrize("page, where, line", COMMANDS,
                         ids=[f"{page}:{w}:{line.split(' #')[0].strip()[:70]}" for page, w, line in COMMANDS])
def test_command_parses(page, where, line, monkeypatch):
    for argv in words_of(line):
        check_command(where, f"{line} ({page})", argv, monkeypatch)


def check_command(where: str, line: str, argv: list[str], monkeypatch) -> None:
    if argv[0] == "torchrun":
        if len(argv) == 1:
            assert where == "inline", f"torchrun without a command in {line!r}"
            return  # named in the prose
        return check_tt(torchrun_args(argv, line), where, line)
    key, args = program(argv)
    if key == "tt":
        if not args and where == "inline":
            return  # `tt` or `python -m tt` named in the prose
        return check_tt(args, where, line)
    if key in SCRIPTS:
        return check_script(key, args, line, monkeypatch)
    if key == "python -c":  # a one-liner: run it
        exec(compile(argv[2], line, "exec"), {"__name__": "readme_one_liner"})
        return
    reason, applies = SKIPPED.get(key, (None, None))
    assert reason is not None and applies(args), f"no check for the command {line!r} ({key} {args}): " \
                                                 "add one, or a reason to SKIPPED"


# ----------------------------------------------------------------------------- the links between the pages

def prose_of(text: str) -> str:
    """A page without its fenced blocks (a `# comment` in a bash block is no heading)."""
    return re.sub(r"^```.*?^```[ \t]*$", "", text, flags=re.S | re.M)


def anchors(page: str) -> set[str]:
    """The anchors of a page's headings, as GitHub makes them: lower case, punctuation dropped, spaces as -."""
    headings = re.findall(r"^#{1,6}[ \t]+(.+?)[ \t]*$", prose_of(page_text(page)), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def links(page: str) -> list[str]:
    """The targets of a page's links and images that point into the repository."""
    targets = re.findall(r"\]\(([^)\s]+)\)", prose_of(page_text(page)))
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", pages())
def test_links_lead_somewhere(page):
    for target in links(page):
        path, _, anchor = target.partition("#")
        file = (ROOT / page).parent / path if path else ROOT / page
        assert file.exists(), f"{page} links to {target!r}: no such file"
        if anchor:
            assert file.suffix == ".md" and anchor in anchors(file.resolve().relative_to(ROOT).as_posix()), \
                f"{page} links to {target!r}: no such heading"


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README.name)}
    unlinked = [page for page in pages()[1:] if (ROOT / page).resolve() not in linked]
    assert not unlinked, f"docs pages {unlinked} are not linked from the README"
