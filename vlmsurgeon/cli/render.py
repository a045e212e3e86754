"""Rendering for people: the module tree (repeated blocks collapsed) and the tables. With
`layout` (fitting them to the width), the only module that knows about rich."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from vlmsurgeon.model.report import Breakdown, human, percent, subtree_components
from vlmsurgeon.model.tree import Node, signature

from .layout import FitConsole, ellipsize, wrap_sentence

COLORS = {
    "vision": "magenta",
    "merger": "yellow",
    "lm": "cyan",
    "head": "green",
    "audio": "blue",
    "protein": "blue",
    "action": "blue",
    "generator": "red",
}


def _tag(node: Node, parent_component: str | None) -> str:
    """`[vision]` where a component starts; when other components sit inside it (Qwen's merger
    inside `visual`), each one's own figure, so the line adds up to what the table says."""
    if not node.component or node.component == parent_component:
        return ""
    figures = subtree_components(node)
    nested = [c for c in (*COLORS, "other") if c != node.component and figures.get(c)]
    if not nested:
        color = COLORS.get(node.component, "white")
        return f"  [{color}]\\[{node.component}][/{color}]"
    parts = [f"[{COLORS.get(c, 'white')}]{c} {human(figures.get(c, 0))}[/]" for c in (node.component, *nested)]
    return "  \\[" + " + ".join(parts) + "]"


def _label(
    node: Node, parent_component: str | None, *, count: int = 1, span: str = "", cls_width: int | None = None
) -> str:
    text = f"{escape(span or node.name)}: " if node.path else ""
    cls = node.cls if cls_width is None else ellipsize(Text(node.cls), max(cls_width, 8)).plain
    if count > 1:
        text += f"{count} × {escape(cls)} · {human(node.total)} each"
    else:
        text += f"{escape(cls)} · {human(node.total)}"
    tied = [p for p in node.params if p.tied_to]
    if tied:
        text += f" (tied to {escape(tied[0].tied_to or '')})"
    return text + _tag(node, parent_component)


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


def tree_lines(root: Node, depth: int, width: int) -> list[Text]:
    """The module tree as lines of at most `width` cells; a label too long for its line is
    shortened in the middle rather than wrapped under the guides."""
    memo: dict[int, Any] = {}
    lines = [ellipsize(Text.from_markup(_label(root, None)), width)]
    stack: list[tuple[Node, int, str, str | None, str, bool, int]] = []

    def push(node: Node, prefix: str, level: int) -> None:
        groups = _groups(node.children, memo)
        for i, (child, count, span) in reversed(list(enumerate(groups))):
            stack.append((child, count, span, node.component, prefix, i == len(groups) - 1, level))

    if depth > 0:
        push(root, "", 1)
    while stack:
        node, count, span, parent_component, prefix, last, level = stack.pop()
        guide = prefix + ("└── " if last else "├── ")
        label = Text.from_markup(_label(node, parent_component, count=count, span=span))
        room = max(width - len(guide), 12)
        if label.cell_len > room:  # the class name gives way first: the figures are the point
            label = Text.from_markup(
                _label(
                    node, parent_component, count=count, span=span, cls_width=len(node.cls) - (label.cell_len - room)
                )
            )
        line = Text()
        line.append(guide, style="dim")
        line.append_text(ellipsize(label, room))
        lines.append(ellipsize(line, width))
        if level < depth:
            push(node, prefix + ("    " if last else "│   "), level + 1)
    return lines


def breakdown_table(result: Breakdown, quantized: tuple[str, ...] = ("lm",)) -> Table:
    """Parameters, share and weight bytes per component (where each starts: `roots_table`)."""
    table = Table(title=f"{result.model}  ({result.model_type}, from {result.source})")
    for col in ("component", "params", "share", "bf16", "4-bit"):
        table.add_column(col, justify="left" if col == "component" else "right")
    total = result.total_params
    bf16 = q4 = 0
    for name, fig in result.components.items():
        color = COLORS.get(name, "white")
        b16, b4 = fig.bytes_bf16(), fig.bytes_4bit(name in quantized)
        bf16, q4 = bf16 + b16, q4 + b4
        table.add_row(
            f"[{color}]{name}[/{color}]", f"{fig.params:,}", percent(fig.params, total), human(b16, "B"), human(b4, "B")
        )
        if name == "lm":
            table.add_row("  of which embeddings", f"{fig.embeddings:,}", percent(fig.embeddings, total))
    table.add_row("other", f"{result.other:,}", percent(result.other, total))
    table.add_row(
        "[bold]total[/bold]",
        f"[bold]{result.total_params:,}[/bold]",
        percent(total, total),
        human(bf16, "B"),
        human(q4, "B"),
    )
    table.caption = f"4-bit: {'/'.join(quantized)} Linear weights in NF4, double quant (4.127 bits); the rest in bf16"
    return table


def roots_table(result: Breakdown) -> Table:
    """The modules where each component starts: the tagged lines of the tree."""
    table = Table(title="where each component starts")
    table.add_column("component")
    table.add_column("roots")
    for name, fig in result.components.items():
        color = COLORS.get(name, "white")
        roots = ", ".join(fig.roots[:3]) + (f" (+{len(fig.roots) - 3})" if len(fig.roots) > 3 else "")
        if name == "head" and fig.tied_to:
            roots = f"tied to {fig.tied_to} (counted once, in lm)"
        table.add_row(f"[{color}]{name}[/{color}]", escape(roots) or "-")
    if result.other:
        table.add_row("other", escape(", ".join(result.other_names[:3])))
    return table


def make_console(stderr: bool = False) -> Console:
    """A console whose tables fit its width: the terminal's, or when piped $COLUMNS, else 80
    (rich's own rule), printed as plain aligned text without trailing spaces."""
    return FitConsole(stderr=stderr)


def print_inspect(result: Breakdown, depth: int, console: Console | None = None) -> None:
    console = console or make_console()
    console.print(Text("\n").join(tree_lines(result.tree, depth, console.width)))
    console.print(breakdown_table(result))
    console.print(roots_table(result))
    line = buffers_line(result)
    if line:
        console.print(escape(line))
    for note in result.notes:
        console.print(f"note: {escape(note)}")


def buffers_line(result: Breakdown) -> str | None:
    """Persistent buffers, when there are any: the checkpoint stores them beside the parameters,
    so the figure to compare with a published count is the total plus these."""
    if not result.buffers:
        return None
    where = ", ".join(f"{c} {n:,}" for c, n in result.buffer_components.items())
    return (
        f"persistent buffers: {result.buffers:,} ({where}), stored in the checkpoint beside the "
        f"parameters: {result.stored_values:,} values in all"
    )


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
        lines.append(
            f"checkpoint: {len(check.missing)} tensor(s) of the model built from the config "
            f"are not in the checkpoint: {_names(check.missing)}"
        )
    if check.unexpected:
        lines.append(
            f"checkpoint: {len(check.unexpected)} tensor(s) in the checkpoint that the model "
            f"built from the config does not have: {_names(check.unexpected)}"
        )
    if check.shape_mismatch:
        shown = [f"{n} config {list(a)} vs checkpoint {list(b)}" for n, a, b in check.shape_mismatch]
        lines.append(f"checkpoint: {len(check.shape_mismatch)} shape mismatch(es): {_names(shown)}")
    if check.untied_head:
        name, params = check.untied_head
        lines.append(
            f"checkpoint: the config ties the head to the input embeddings but the checkpoint "
            f"stores its own {name} ({params:,} params); the figures count the head as tied "
            "(set tie_word_embeddings: false in config.json if the head is its own)"
        )
    return lines


def print_wrapped(sentence: str, console: Console | None = None) -> None:
    """A sentence for a person (`OUT: merged …`) at the console's width (`wrap_sentence`)."""
    console = console or make_console()
    console.print(Text("\n").join(wrap_sentence(sentence, console.width)))


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def plan_table(result: Any) -> Table:
    """What trains, per component (a PlanResult)."""
    report, applied = result.breakdown, result.applied
    table = Table(title=f"{report.model}  ({report.model_type}) · preset {result.preset.name}", title_justify="left")
    for col in ("component", "params", "trainable", "share", "how", "4-bit"):
        table.add_column(
            col,
            justify="right" if col in ("params", "trainable", "share") else "left",
            no_wrap=col in ("params", "trainable"),
        )
    for name, fig in report.components.items():
        state = applied.components.get(name)
        trainable = state.trainable if state else 0
        how = state.describe if state else "frozen"
        if state and state.lora_modules:
            how += f" · {state.lora_modules} modules"
        if name == "head" and fig.tied_to:
            how += f" (tied to {fig.tied_to})"
        color = COLORS.get(name, "white")
        table.add_row(
            f"[{color}]{name}[/{color}]",
            f"{fig.params:,}",
            f"{trainable:,}",
            percent(trainable, fig.params),
            escape(how),
            "yes" if name in result.quantized else "",
        )
    table.add_row(
        "[bold]total[/bold]",
        f"{report.total_params:,}",
        f"[bold]{result.trainable:,}[/bold]",
        percent(result.trainable, report.total_params),
        "",
        "",
    )
    return table


def memory_table(result: Any) -> Table:
    m, s = result.memory, result.settings
    objective = s.objective
    batch = f"batch {s.batch_size}"
    if objective.paired:  # the policy runs chosen and rejected: 2 sequences a pair
        batch = f"batch {s.batch_size} pair(s) = {objective.sequences(s.batch_size)} sequences"
    if objective.generates:  # grpo: G completions per prompt
        batch = f"batch {s.batch_size} prompt(s) × {objective.group} = {objective.sequences(s.batch_size)} sequences"
    table = Table(
        title=f"training memory estimate · {batch} × seq {s.seq_len}, {s.image_tokens} image tokens/sample",
        title_justify="left",
    )
    table.add_column("part")
    table.add_column("bytes", justify="right")
    rows = [
        ("weights (+ the trained copies of full parts)", m.weights),
        ("LoRA adapters (fp32)", m.adapters),
        ("gradients", m.gradients),
        ("AdamW states (2 per trainable param)", m.optimizer),
        ("layer inputs kept (checkpointing on)", m.activations),
        ("logits + their gradient (fp32) ¹", m.logits),
        ("one layer's backward (recompute + gradients) ¹", m.backward),
    ]
    if objective.reference:
        rows.insert(4, ("reference: frozen copies of full parts", m.reference_copies))
        rows.append(("reference forward, no graph (before the policy's) ²", m.no_grad_forward))
    if objective.generates:
        rows.append(("generation: KV cache, every sequence at full length", m.kv_cache))
        rows.append(("generation phase, no graph: its largest moment ³", m.generation))
    for label, value in rows:
        table.add_row(label, human(value, "B"))
    larger = "¹: the larger counts" + ("; ² if above inputs + ¹" if objective.reference else "")
    larger += "; ³ if above the rest" if objective.generates else ""
    table.add_row(f"[bold]total, checkpointing on[/bold] ({larger})", f"[bold]{human(m.total, 'B')}[/bold]")
    table.add_row("activations kept (checkpointing off)", human(m.activations_no_ckpt, "B"))
    table.add_row("one layer's backward (no recompute) ¹", human(m.backward_no_ckpt, "B"))
    table.add_row("[bold]total, checkpointing off[/bold]", f"[bold]{human(m.total_no_ckpt, 'B')}[/bold]")
    return table


def phases_line(m: Any) -> str:
    """grpo: which phase sets the step's peak, with both figures (checkpointing on)."""
    generation, training = m.state + m.generation, m.state + m.training(True)
    phase = m.peak_phase(True)
    other = "training" if phase == "generation" else "generation"
    figures = {"generation": generation, "training": training}
    return (
        f"peak: the {phase} phase, {human(figures[phase], 'B')} (the {other} phase: "
        f"{human(figures[other], 'B')}; KV cache {human(m.kv_cache, 'B')})"
    )


def print_plan(result: Any, console: Console | None = None) -> None:
    console = console or make_console()
    console.print(plan_table(result))
    objective = result.settings.objective
    if objective.name != "sft":
        console.print(f"objective: {escape(objective.describe(result.settings.batch_size))}")
    console.print(memory_table(result))
    if objective.generates:
        console.print(phases_line(result.memory))
    if result.scale_out is not None:
        console.print(f"scale-out: {escape(result.scale_out.describe())}")
    for note in result.notes:
        console.print(f"note: {escape(note)}")
    if result.probe is not None:
        print_probe(result.probe, console)


def print_probe(probe: Any, console: Console) -> None:
    grads = probe.report
    console.print(
        f"[bold]gradient probe[/bold] · narrow replica {human(probe.replica_params)} params "
        f"(model {human(probe.full_params)}), {probe.tokens} tokens, {probe.seconds:.1f} s · "
        f"{grads.checked:,} trainable tensors checked"
    )
    if not grads.dead_count:
        console.print("  [green]every trainable tensor got a gradient[/green]")
    for comp in sorted(grads.dead):
        color = COLORS.get(comp, "white")
        console.print(
            f"  [bold red]dead[/bold red] [{color}]{comp}[/{color}]: {len(grads.dead[comp])} "
            f"trainable tensor(s) get no gradient: {escape(', '.join(grads.grouped(comp)))}"
        )
    for comp in sorted(grads.not_reached):
        console.print(
            f"  {comp}: {len(grads.not_reached[comp]):,} expert weight(s) not reached by the "
            "probe's tokens (routing of this batch, not dead wiring)"
        )


def presets_table(presets: list[Any]) -> Table:
    from vlmsurgeon.model.components import ALL_COMPONENTS
    from vlmsurgeon.recipe.preset import loaded_4bit

    table = Table(title="built-in presets (vlmsurgeon presets NAME shows one)", title_justify="left")
    for col in ("name", "vision", "merger", "lm", "head", "4-bit"):
        table.add_column(col)
    unquantized = []
    for p in presets:
        loading = loaded_4bit(p, ALL_COMPONENTS)  # what finetune loads in 4-bit, not the file's list
        unquantized += [p.name] if loading.reason else []
        table.add_row(
            p.name,
            *(escape(p.spec(c).describe()) for c in ("vision", "merger", "lm", "head")),
            ",".join(loading.quantized) or "-",
        )
        table.add_row(f"  [dim]{escape(p.description)}[/dim]", *[""] * 5)  # a line of its own: it is prose
    if unquantized:
        table.caption = (
            f"{', '.join(unquantized)}: quantize lists a component, but nothing trains as LoRA "
            "and a 4-bit model trains only through adapters, so everything loads in 16-bit"
        )
    return table


def budget_table(result: Any) -> Table:
    """One heading line per model, then its limits: a percent limit with the count it allows,
    the figure and the margin (how far inside the limit; negative: over it) in the limit's units."""
    table = Table(title="parameter budget")
    for col in ("limit", "figure", "margin", "verdict"):
        table.add_column(col, justify="left" if col in ("limit", "verdict") else "right")
    error = "[bold magenta]ERROR[/bold magenta]"  # not checked: the reason is on stderr
    rows: dict[int, list[Any]] = {}
    for r in result.results:
        rows.setdefault(r.entry, []).append(r)
    names = {r.entry: r.model for r in result.results}
    names.update({e.entry: e.model for e in result.errors if e.entry not in rows and e.entry is not None})
    for entry in sorted(names):
        table.add_row(f"[bold]{escape(names[entry])}[/bold]", "", "", "")
        if entry not in rows:  # an entry without limits that failed to load
            table.add_row("  load model", "-", "-", error)
        for r in rows.get(entry, []):
            verdict = error if r.error is not None else ("[green]ok[/green]" if r.ok else "[bold red]FAIL[/bold red]")
            # a percent limit takes two lines: shares on the first, the counts they mean below
            table.add_row(
                f"  {escape(r.limit_text(chr(10) + '    = '))}",
                r.amount(r.figure, "\n"),
                r.amount(r.margin, "\n"),
                verdict,
            )
    return table


def diff_table(result: Any) -> Table:
    table = Table(title=f"diff {result.a} → {result.b}", title_justify="left")
    for col in ("component", "tensors", "changed", "cast only", "unchanged", "max |Δ|", "relative ‖Δ‖"):
        table.add_column(col, justify="left" if col == "component" else "right")
    for name, d in result.components.items():
        color = COLORS.get(name, "white")
        table.add_row(
            f"[{color}]{name}[/{color}]",
            str(d.compared),
            str(d.changed),
            str(d.cast_only),
            str(d.unchanged),
            f"{d.max_abs:.3g}",
            f"{d.relative:.3g}",
        )
    if result.only_in_a or result.only_in_b or result.shape_mismatch:
        table.caption = (
            f"only in A: {len(result.only_in_a)}, only in B: {len(result.only_in_b)}, "
            f"shape mismatch: {len(result.shape_mismatch)}"
        )
    return table


def print_diff(result: Any, console: Console | None = None) -> None:
    """`diff`: the table, then what rounding accounts for."""
    console = console or make_console()
    console.print(diff_table(result))
    note = result.cast_note()
    if note:
        console.print(escape(note), soft_wrap=True)


def print_families(families: dict[str, Any]) -> None:
    """`tiny --list`: one family a line (model_type, processor, video input, whether --packing packs
    it, training notes)."""
    from vlmsurgeon.model.packing import PACKS
    from vlmsurgeon.model.support import UNSUPPORTED
    from vlmsurgeon.tiny.build import video_placeholder

    width = max(map(len, families))
    for name in sorted(families):
        family = families[name]
        video = "image+video" if video_placeholder(family) else "image"
        packs = "packs" if name in PACKS else "-"
        blocker = UNSUPPORTED.get(name)
        note = ""
        if blocker is not None:
            note = (
                f"  finetune: no ({blocker.reason})" if blocker.when == "always" else f"  finetune: needs {blocker.fix}"
            )
        print(f"{name:<{width}}  {family.processor:<28} {video:<11}  {packs:<5}{note}".rstrip())
    packed = sum(name in PACKS for name in families)
    print(f"{len(families)} families; {packed} pack (finetune --packing keeps their rows apart; docs/finetune.md)")


def print_data_report(report: Any, console: Console | None = None) -> None:
    """`data check`: rows, media, token statistics, bad rows and what was not used."""
    console = console or make_console()
    formats = ", ".join(f"{n} {k}" for k, n in sorted(report.formats.items())) or "none"
    console.print(
        f"{escape(report.path)} ({report.kind}): {report.rows} usable row(s) [{formats}], "
        f"{report.images} image(s), {report.videos} video(s); --seq-len {report.seq_len}",
        soft_wrap=True,
    )
    table = Table(title="tokens per row", title_justify="left")
    for column in ("", "p50", "p95", "max"):
        table.add_column(column, justify="right" if column else "left")
    for kind, stats in report.stats().items():
        table.add_row(kind, *(f"{stats[k]:,}" for k in ("p50", "p95", "max")))
    console.print(table)
    preference = report.preference()
    if preference is not None:
        if preference["kind"] == "pair":
            said = f"{preference['pairs']} pair(s); identical chosen and rejected (refused): {preference['identical']}"
        else:
            said = f"labels: {preference['desirable']} desirable, {preference['undesirable']} undesirable"
        console.print(said)
        parts = Table(title="tokens per side", title_justify="left")
        for column in ("", "p50", "p95", "max"):
            parts.add_column(column, justify="right" if column else "left")
        for part, stats in preference["tokens"].items():
            parts.add_row(part, *(f"{stats[k]:,}" for k in ("p50", "p95", "max")))
        console.print(parts)
    prompts = report.prompts()
    if prompts is not None:
        lengths = prompts["tokens"]["prompt"]
        columns = ", ".join(f"{k} ({n})" for k, n in prompts["columns"].items()) or "none"
        console.print(
            f"{prompts['prompts']} prompt(s): {lengths['p50']:,} tokens p50, {lengths['max']:,} max, each with room "
            f"for --max-completion-length {prompts['completion_tokens']:,}; columns for the rewards: {columns}",
            soft_wrap=True,
        )
    if report.packing is not None:
        console.print(report.packing.line(), soft_wrap=True)
    console.print(f"truncated: {report.truncated} · over the limit: {len(report.over_limit)} · bad: {len(report.bad)}")
    for row in [*report.over_limit, *report.bad][:20]:
        console.print(f"  {escape(str(row))}", soft_wrap=True)
    if report.skipped > 20:
        console.print(f"  … and {report.skipped - 20} more")
    for note in report.notes:
        console.print(f"note: {escape(note)}", soft_wrap=True)


def print_pair_eval(result: Any, console: Console | None = None) -> None:
    """`eval` on preference pairs: per model, how often the chosen answer is the likelier and the
    mean log-prob margin; with --compare, the delta and the implicit reward accuracy."""
    console = console or make_console()
    table = Table(
        title=f"{escape(result.data)}: {len(result.rows)} pair(s), {len(result.skipped)} skipped", title_justify="left"
    )
    table.add_column("model")
    table.add_column("preference accuracy", justify="right")
    table.add_column("mean margin (log-prob)", justify="right")
    totals, delta = result.totals(), result.delta()
    for model in result.models:
        figures = totals[model.name]
        table.add_row(escape(f"{model.name}: {model.source}"), f"{figures['accuracy']:.3f}", f"{figures['margin']:.3f}")
    if delta is not None:
        table.add_row(
            "[bold]delta (model − compare)[/bold]",
            f"[bold]{delta['accuracy']:+.3f}[/bold]",
            f"[bold]{delta['margin']:+.3f}[/bold]",
        )
    console.print(table)
    reward = result.reward_accuracy()
    if reward is not None:
        console.print(f"implicit reward accuracy (model, with compare as its reference): {reward:.3f}")


def print_prompt_eval(result: Any, console: Console | None = None) -> None:
    """`eval --reward`: per model each reward's mean (over the rows it applies to) and the mean
    weighted total; with --compare, the delta; then where a reward skipped rows (None)."""
    from vlmsurgeon.use.prompt_eval import TOTAL, mean_key

    console = console or make_console()
    table = Table(
        title=f"{escape(result.data)}: {len(result.rows)} prompt(s), {len(result.skipped)} skipped",
        title_justify="left",
    )
    table.add_column("model")
    keys = [mean_key(r.name) for r in result.rewards] + [TOTAL]
    for r in result.rewards:
        table.add_column(escape(r.name if r.weight == 1 else f"{r.name} ×{r.weight:g}"), justify="right")
    table.add_column("reward (weighted)", justify="right")
    totals, delta = result.totals(), result.delta()
    for model in result.models:
        table.add_row(escape(f"{model.name}: {model.source}"), *(f"{totals[model.name][k]:.3f}" for k in keys))
    if delta is not None:
        table.add_row("[bold]delta (model − compare)[/bold]", *(f"[bold]{delta[k]:+.3f}[/bold]" for k in keys))
    console.print(table)
    rows, applied = len(result.rows), result.applied()
    for r in result.rewards:
        counts = {model: counts[r.name] for model, counts in applied.items()}
        same = len(set(counts.values())) == 1  # a built-in's rows are the solution's: the same for every model
        for model, count in counts.items():
            if count < rows:
                who = r.name if same else f"{r.name} ({model})"
                console.print(escape(f"{who}: applies to {count} of {rows} prompt(s); its mean is over those"))
            if same:
                break


def print_eval(result: Any, report: Any = None, console: Console | None = None) -> None:
    """`eval`: totals per model (means over the scored rows), and the delta with --compare."""
    from vlmsurgeon.use.evaluate import METRICS

    console = console or make_console()
    labels = {"exact_match": "exact match", "f1": "token F1", "rouge_l": "ROUGE-L"}
    table = Table(
        title=f"{escape(result.data)}: {len(result.rows)} row(s), {len(result.skipped)} skipped", title_justify="left"
    )
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
