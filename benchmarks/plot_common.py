"""What every benchmark plot does last: axis labels, grid, legend, title, save as PNG, close."""
from __future__ import annotations


def finish_figure(fig, axes, xlabel: str, title: str, path: str) -> None:
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
