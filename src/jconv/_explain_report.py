"""`ExplainReport`: the public report of `jconv.explain` and `jconv explain`, renderable.

A `jconv._report.Report` with its renderers as methods: rich tables, plain text of any
width, JSON, Markdown (also in Jupyter), LaTeX and the hypotheses plot.
"""

from __future__ import annotations

from typing import Any

from ._report import Report

__all__ = ["ExplainReport"]


class ExplainReport(Report):
    """What `jconv.explain` returns: `networks` (one per explained model) with per-layer
    rows, totals and checks, `hypotheses`, `ok` (no check failed); rendered with
    `to_text`, `print`, `to_json`, `to_dict`, `to_markdown`, `to_latex`, `plot`."""

    # ------------------------------------------------------------------ rendering
    def to_json(self) -> str:
        """Indented JSON with stable keys (schema ``jconv.explain/1``)."""
        from ._explain_render import render_json

        return render_json(self)

    def to_dict(self) -> dict[str, Any]:
        """The JSON data as Python objects."""
        from ._explain_render import report_dict

        return report_dict(self)

    def to_markdown(self) -> str:
        """GitHub Markdown tables."""
        from ._explain_render import render_markdown

        return render_markdown(self)

    def to_latex(self) -> str:
        """A LaTeX fragment of tabulars."""
        from ._explain_render import render_latex

        return render_latex(self)

    def to_text(self, width: int = 120, view: str = "auto") -> str:
        """The terminal tables as plain text of `width` columns (narrow layout below 120)."""
        import io

        from rich.console import Console

        from ._explain_render import render_rich

        buffer = io.StringIO()
        render_rich(self, Console(file=buffer, width=width, no_color=True), view=view)
        return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())

    def print(self, view: str = "auto") -> None:
        """Print the rich tables to the terminal."""
        from rich.console import Console

        from ._explain_render import render_rich

        render_rich(self, Console(), view=view)

    def __str__(self) -> str:
        return self.to_text()

    def plot(self, path: str) -> str:
        """Write the hypotheses plot; returns the file written."""
        from ._explain_render import write_plot

        if self.hypotheses is None:
            raise ValueError("This report has no hypotheses table (no conv layer) to plot.")
        return write_plot(self.hypotheses, path)

    def _repr_markdown_(self) -> str:
        return self.to_markdown()
