"""Rendering for people: the module tree (repeated blocks collapsed) and the breakdown table.
The only module that knows about rich."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from .report import Breakdown
from .tree import Node, signature

COLORS = {"vision": "magenta", "merger": "yellow", "lm": "cyan", "head": "green",
          "audio": "blue", "protein": "blue", "action": "blue", "generator": "red"}


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.2M'; bytes with unit='B' -> '2.3 GiB'."""
    if unit == "B":
        for suffix, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if abs(n) >= scale:
                return f"{n / scale:.2f} {suffix}"
        return f"{int(n)} B"
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return str(int(n))


def _label(node: Node, parent_component: str | None, *, count: int = 1, span: str = "") -> str:
    text = f"{escape(span or node.name)}: " if node.path else ""
    if count > 1:
        text += f"{count} × {escape(node.cls)} · {human(node.total)} each"
    else:
        text += f"{escape(node.cls)} · {human(node.total)}"
    tied = [p for p in node.params if p.tied_to]
    if tied:
        text += f" (tied to {escape(tied[0].tied_to or '')})"
    if node.component and node.component != parent_component:
        color = COLORS.get(node.component, "white")
        text += f"  [{color}]\\[{node.component}][/{color}]"
    return text


def _groups(children: list[Node], memo: dict[int, Any]) -> list[tuple[Node, int, str]]:
    """Consecutive numbered siblings with identical structure collapse into one group."""
    groups: list[tuple[Node, int, str]] = []
    i = 0
    while i < len(children):
        node, j = children[i], i + 1
        if node.name.isdigit():
            sig = signature(node, memo)
            while j < len(children) and children[j].name.isdigit() and signature(children[j], memo) == sig:
                j += 1
        span = f"({node.name}-{children[j - 1].name})" if j - i > 1 else ""
        groups.append((node, j - i, span))
        i = j
    return groups


def module_tree(root: Node, depth: int) -> Tree:
    memo: dict[int, Any] = {}
    tree = Tree(_label(root, None))
    stack: list[tuple[Node, Tree, int]] = [(root, tree, 0)]
    while stack:
        node, branch, level = stack.pop()
        if level >= depth:
            continue
        for child, count, span in _groups(node.children, memo):
            sub = branch.add(_label(child, node.component, count=count, span=span))
            stack.append((child, sub, level + 1))
    return tree


def breakdown_table(result: Breakdown, quantized: tuple[str, ...] = ("lm",)) -> Table:
    table = Table(title=f"{result.model}  ({result.model_type}, from {result.source})",
                  title_justify="left")
    for col in ("component", "params", "share", "bf16", "4-bit", "roots"):
        numeric = col in ("params", "share", "bf16", "4-bit")
        table.add_column(col, justify="right" if numeric else "left", no_wrap=numeric)
    total = result.total_params or 1
    bf16 = q4 = 0
    for name, fig in result.components.items():
        color = COLORS.get(name, "white")
        b16, b4 = fig.bytes_bf16(), fig.bytes_4bit(name in quantized)
        bf16, q4 = bf16 + b16, q4 + b4
        roots = ", ".join(fig.roots[:3]) + (f" (+{len(fig.roots) - 3})" if len(fig.roots) > 3 else "")
        if name == "head" and fig.tied_to:
            roots = f"tied to {fig.tied_to} (counted once, in lm)"
        table.add_row(f"[{color}]{name}[/{color}]", f"{fig.params:,}", f"{100 * fig.params / total:.2f}%",
                      human(b16, "B"), human(b4, "B"), roots or "-")
        if name == "lm":
            table.add_row("  of which embeddings", f"{fig.embeddings:,}",
                          f"{100 * fig.embeddings / total:.2f}%", "", "", "")
    table.add_row("other", f"{result.other:,}", f"{100 * result.other / total:.2f}%", "", "",
                  ", ".join(result.other_names[:3]) or "-")
    table.add_row("[bold]total[/bold]", f"[bold]{result.total_params:,}[/bold]", "100.00%",
                  human(bf16, "B"), human(q4, "B"), "")
    table.caption = ("4-bit: Linear weights of " + "/".join(quantized) +
                     " in NF4 with double quant (4.127 bits), everything else bf16")
    return table


def make_console(stderr: bool = False) -> Console:
    """A console that keeps tables readable when piped (rich would fall back to 80 columns)."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=160)
    return console


def print_inspect(result: Breakdown, depth: int, console: Console | None = None) -> None:
    console = console or make_console()
    console.print(module_tree(result.tree, depth))
    console.print(breakdown_table(result))
    for note in result.notes:
        console.print(f"note: {note}")


def _names(names: list[str], shown: int = 3) -> str:
    more = f" (+{len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def checkpoint_warnings(check: Any) -> list[str]:
    """One plain line per kind of difference between the config's model and its checkpoint."""
    if check is None or not check.checked:
        unreadable = check is not None and check.unreadable
        return [f"checkpoint not checked: {check.reason}"] if unreadable else []
    lines = []
    if check.missing:
        lines.append(f"checkpoint: {len(check.missing)} tensor(s) of the model built from the config "
                     f"are not in the checkpoint: {_names(check.missing)}")
    if check.unexpected:
        lines.append(f"checkpoint: {len(check.unexpected)} tensor(s) in the checkpoint that the model "
                     f"built from the config does not have: {_names(check.unexpected)}")
    if check.shape_mismatch:
        shown = [f"{n} config {list(a)} vs checkpoint {list(b)}" for n, a, b in check.shape_mismatch]
        lines.append(f"checkpoint: {len(check.shape_mismatch)} shape mismatch(es): {_names(shown)}")
    if check.untied_head:
        name, params = check.untied_head
        lines.append(f"checkpoint: the config ties the head to the input embeddings but the checkpoint "
                     f"stores its own {name} ({params:,} params); the figures count the head as tied "
                     "(set tie_word_embeddings: false in config.json if the head is its own)")
    return lines


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def plan_table(result: Any) -> Table:
    """What trains, per component (a PlanResult)."""
    report, applied = result.breakdown, result.applied
    table = Table(title=f"{report.model}  ({report.model_type}) · preset {result.preset.name}",
                  title_justify="left")
    for col in ("component", "params", "trainable", "share", "how", "4-bit"):
        table.add_column(col, justify="right" if col in ("params", "trainable", "share") else "left",
                         no_wrap=col in ("params", "trainable"))
    for name, fig in report.components.items():
        state = applied.components.get(name)
        trainable = state.trainable if state else 0
        how = state.describe if state else "frozen"
        if state and state.lora_modules:
            how += f" · {state.lora_modules} modules"
        if name == "head" and fig.tied_to:
            how += f" (tied to {fig.tied_to})"
        color = COLORS.get(name, "white")
        share = f"{100 * trainable / fig.params:.2f}%" if fig.params else "-"
        table.add_row(f"[{color}]{name}[/{color}]", f"{fig.params:,}", f"{trainable:,}", share,
                      escape(how), "yes" if name in result.preset.quantize else "")
    total = report.total_params or 1
    table.add_row("[bold]total[/bold]", f"{report.total_params:,}", f"[bold]{result.trainable:,}[/bold]",
                  f"{100 * result.trainable / total:.3f}%", "", "")
    return table


def memory_table(result: Any) -> Table:
    m, s = result.memory, result.settings
    table = Table(title=(f"training memory estimate · batch {s.batch_size} × seq {s.seq_len}, "
                         f"{s.image_tokens} image tokens/sample"), title_justify="left")
    table.add_column("part")
    table.add_column("bytes", justify="right")
    rows = [("weights (4-bit where quantized, bf16 otherwise)", m.weights),
            ("LoRA adapters (fp32)", m.adapters), ("gradients", m.gradients),
            ("AdamW states (2 per trainable param)", m.optimizer),
            ("activations, gradient checkpointing on", m.activations),
            ("logits + their gradient (fp32)", m.logits)]
    for label, value in rows:
        table.add_row(label, human(value, "B"))
    table.add_row("[bold]total, checkpointing on[/bold]", f"[bold]{human(m.total, 'B')}[/bold]")
    table.add_row("activations, checkpointing off", human(m.activations_no_ckpt, "B"))
    table.add_row("[bold]total, checkpointing off[/bold]", f"[bold]{human(m.total_no_ckpt, 'B')}[/bold]")
    return table


def print_plan(result: Any, console: Console | None = None) -> None:
    console = console or make_console()
    console.print(plan_table(result))
    console.print(memory_table(result))
    for note in result.notes:
        console.print(f"note: {escape(note)}")
    if result.probe is not None:
        print_probe(result.probe, console)


def print_probe(probe: Any, console: Console) -> None:
    grads = probe.report
    console.print(f"[bold]gradient probe[/bold] · narrow replica {human(probe.replica_params)} params "
                  f"(model {human(probe.full_params)}), {probe.tokens} tokens, {probe.seconds:.1f} s · "
                  f"{grads.checked:,} trainable tensors checked")
    if not grads.dead_count:
        console.print("  [green]every trainable tensor got a gradient[/green]")
    for comp in sorted(grads.dead):
        color = COLORS.get(comp, "white")
        console.print(f"  [bold red]dead[/bold red] [{color}]{comp}[/{color}]: {len(grads.dead[comp])} "
                      f"trainable tensor(s) get no gradient: {escape(', '.join(grads.grouped(comp)))}")
    for comp in sorted(grads.not_reached):
        console.print(f"  {comp}: {len(grads.not_reached[comp]):,} expert weight(s) not reached by the "
                      "probe's tokens (routing of this batch, not dead wiring)")


def presets_table(presets: list[Any]) -> Table:
    table = Table(title="built-in presets (vlmsurgeon presets NAME shows one)", title_justify="left")
    for col in ("name", "vision", "merger", "lm", "head", "4-bit", "description"):
        table.add_column(col)
    for p in presets:
        table.add_row(p.name, *(escape(p.spec(c).describe()) for c in ("vision", "merger", "lm", "head")),
                      ",".join(p.quantize) or "-", p.description)
    return table


def budget_table(result: Any) -> Table:
    table = Table(title="parameter budget", title_justify="left")
    for col in ("model", "limit", "figure", "verdict"):
        table.add_column(col, justify="right" if col == "figure" else "left")
    error = "[bold magenta]ERROR[/bold magenta]"  # not checked: the reason is on stderr
    for r in result.results:
        unit = "B" if r.limit.key == "memory" else ""
        if r.figure is None:
            table.add_row(escape(r.model), escape(r.describe()), "—", error)
            continue
        figure = human(r.figure, unit) if unit else f"{r.figure:,} ({human(r.figure)})"
        verdict = "[green]ok[/green]" if r.ok else "[bold red]FAIL[/bold red]"
        table.add_row(escape(r.model), escape(r.describe()), figure, verdict)
    with_rows = {r.entry for r in result.results}
    for e in result.errors:
        if e.entry not in with_rows:  # an entry without limits that failed to load
            table.add_row(escape(e.model), "load model", "—", error)
    return table


def diff_table(result: Any) -> Table:
    table = Table(title=f"diff {result.a} → {result.b}", title_justify="left")
    for col in ("component", "tensors", "changed", "max |Δ|", "relative ‖Δ‖"):
        table.add_column(col, justify="left" if col == "component" else "right")
    for name, d in result.components.items():
        color = COLORS.get(name, "white")
        table.add_row(f"[{color}]{name}[/{color}]", str(d.compared), str(d.changed),
                      f"{d.max_abs:.3g}", f"{d.relative:.3g}")
    if result.only_in_a or result.only_in_b or result.shape_mismatch:
        table.caption = (f"only in A: {len(result.only_in_a)}, only in B: {len(result.only_in_b)}, "
                         f"shape mismatch: {len(result.shape_mismatch)}")
    return table


def print_families(families: dict[str, Any]) -> None:
    """`tiny --list`: one family a line (model_type, processor, video input, training notes)."""
    from .support import UNSUPPORTED
    from .tiny import video_placeholder

    width = max(map(len, families))
    for name in sorted(families):
        family = families[name]
        video = "image+video" if video_placeholder(family) else "image"
        blocker = UNSUPPORTED.get(name)
        note = ""
        if blocker is not None:
            note = (f"  finetune: no ({blocker.reason})" if blocker.when == "always"
                    else f"  finetune: needs {blocker.fix}")
        print(f"{name:<{width}}  {family.processor:<28} {video}{note}".rstrip())
    print(f"{len(families)} families")


def print_data_report(report: Any, console: Console | None = None) -> None:
    """`data check`: rows, media, token statistics, bad rows and what was not used."""
    console = console or make_console()
    formats = ", ".join(f"{n} {k}" for k, n in sorted(report.formats.items())) or "none"
    console.print(f"{escape(report.path)} ({report.kind}): {report.rows} usable row(s) [{formats}], "
                  f"{report.images} image(s), {report.videos} video(s); --seq-len {report.seq_len}",
                  soft_wrap=True)
    table = Table(title="tokens per row", title_justify="left")
    for column in ("", "p50", "p95", "max"):
        table.add_column(column, justify="right" if column else "left")
    for kind, stats in report.stats().items():
        table.add_row(kind, *(f"{stats[k]:,}" for k in ("p50", "p95", "max")))
    console.print(table)
    console.print(f"truncated: {report.truncated} · over the limit: {len(report.over_limit)} · "
                  f"bad: {len(report.bad)}")
    for row in [*report.over_limit, *report.bad][:20]:
        console.print(f"  {escape(str(row))}", soft_wrap=True)
    if report.skipped > 20:
        console.print(f"  … and {report.skipped - 20} more")
    for note in report.notes:
        console.print(f"note: {escape(note)}", soft_wrap=True)


def print_eval(result: Any, report: Any = None, console: Console | None = None) -> None:
    """`eval`: totals per model (means over the scored rows), and the delta with --compare."""
    from .evaluate import METRICS

    console = console or make_console()
    labels = {"exact_match": "exact match", "f1": "token F1", "rouge_l": "ROUGE-L"}
    table = Table(title=f"{escape(result.data)}: {len(result.rows)} row(s), {len(result.skipped)} skipped",
                  title_justify="left")
    table.add_column("model")
    for metric in METRICS:
        table.add_column(labels[metric], justify="right")
    totals, delta = result.totals(), result.delta()
    for model in result.models:
        table.add_row(escape(f"{model.name}: {model.source}"), *(f"{totals[model.name][m]:.3f}" for m in METRICS))
    if delta is not None:
        table.add_row("[bold]delta (model − compare)[/bold]", *(f"[bold]{delta[m]:+.3f}[/bold]" for m in METRICS))
    console.print(table)
    if report is not None:
        console.print(f"report: {escape(str(report))}/report.html", soft_wrap=True)
