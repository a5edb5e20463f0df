"""`cvzoo` command line: a thin layer over the Python API. Heavy imports (torch) stay inside commands."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import CvzooError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="cvzoo: image-classification model zoo and deployment toolchain.")
console = Console()
err_console = Console(stderr=True)


@app.command("list")
def list_cmd(family: Optional[str] = typer.Option(None, "--family", "-f", help="vovnet, cspnet, dla, efficientnet")):
    """Table of the zoo's models."""
    from .card import families, list_models
    if family is not None and family not in families():
        raise CvzooError(f"unknown family '{family}' (known: {', '.join(families())})")
    table = Table(title="cvzoo models")
    for col in ("name", "family", "arch", "input", "classes", "params(M)", "top1", "source"):
        table.add_column(col, justify="right" if col in ("input", "classes", "params(M)", "top1") else "left")
    for card in list_models(family):
        row = card.published[0] if card.published else None
        table.add_row(card.name, card.family, card.arch, str(card.input_size), str(card.num_classes),
                      f"{row.params_m:.3f}" if row and row.params_m else "-",
                      f"{row.top1:.3f}" if row else "-", row.source if row else "-")
    console.print(table)


@app.command()
def info(name: str):
    """A model card with every published result row."""
    from .card import get_card
    from .checkpoint import find_default_weights
    card = get_card(name)
    p = card.preprocessing
    console.print(f"[bold]{card.name}[/bold]  family={card.family}  arch={card.arch}  paper={card.paper or '-'}")
    if card.arch_kwargs:
        console.print(f"arch config: {card.arch_kwargs}")
    console.print(f"classes: {card.num_classes} ({card.labels})  checkpoint formats: {', '.join(card.checkpoint)}")
    console.print(f"preprocessing: resize short side {p.resize_size} ({p.interpolation}) -> center-crop "
                  f"{p.input_size} (crop_pct {p.crop_pct}) -> /255 -> mean {list(p.mean)} std {list(p.std)}")
    weights = find_default_weights(card)
    console.print(f"default weights: {weights or (card.weights.model_dump(exclude_none=True) if card.weights else 'none')}")
    table = Table(title="published results")
    for col in ("source", "dataset", "top1", "top5", "FLOPs(G)", "params(M)", "input"):
        table.add_column(col)
    for r in card.published:
        table.add_row(r.source, r.dataset, f"{r.top1}", f"{r.top5 if r.top5 is not None else '-'}",
                      f"{r.flops_g if r.flops_g is not None else '-'}",
                      f"{r.params_m if r.params_m is not None else '-'}", str(r.input_size))
    console.print(table)


@app.command()
def profile(name: str, size: Optional[int] = typer.Option(None, help="input size (default: the card's)"),
            json_out: bool = typer.Option(False, "--json", help="print JSON")):
    """Params, measured GMACs, and FLOPs in the seed tables' convention (thop MACs x 2 / 0.9)."""
    import json
    from .card import get_card
    from .profile import profile_model
    card = get_card(name)
    prof = profile_model(card, size)
    if json_out:
        print(json.dumps(prof.as_dict(), indent=2))
        return
    table = Table(title=f"{card.name} @ {prof.input_size}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("published (timm)", justify="right")
    row = card.published_row("timm")
    same = row is not None and row.input_size == prof.input_size
    table.add_row("params (M), all", f"{prof.params_m:.3f}", "")
    table.add_row("GMACs (conv/linear/matmul)", f"{prof.gmacs:.3f}", "")
    table.add_row("thop params (M)", f"{prof.thop_params_m:.3f}", f"{row.params_m}" if same else "")
    table.add_row("thop GMACs", f"{prof.thop_gmacs:.3f}", "")
    table.add_row("seed FLOPs (G) = thop MACs x 2/0.9", f"{prof.seed_flops_g:.3f}", f"{row.flops_g}" if same else "")
    console.print(table)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: user errors become one line on stderr and exit code 2, no traceback."""
    try:
        app(args=argv, standalone_mode=False)
    except CvzooError as e:
        err_console.print(f"[red]error:[/red] {e}", markup=True, highlight=False, soft_wrap=True)
        return 2
    except (typer.Exit, SystemExit) as e:
        return getattr(e, "exit_code", getattr(e, "code", 0)) or 0
    except typer.Abort:
        return 130
    except Exception as e:  # click usage errors
        import click
        if isinstance(e, click.ClickException):
            e.show()
            return e.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
