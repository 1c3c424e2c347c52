"""`napari-ssl pretrain`: self-supervised pretraining of a U-Net encoder on unlabelled scans."""
from __future__ import annotations

import argparse
import os
import sys

HELP = "pretrain a U-Net encoder on unlabelled scans with a self-supervised method (see `napari-ssl methods`)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", help="method name (see `napari-ssl methods`); with --resume, defaults to the run's method")
    p.add_argument("--data", nargs="+", metavar="PATH", help="DICOM folders, NIfTI/NRRD/MHA files, or folders of them")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (encoder.safetensors, model.json, last.ckpt, losses.csv, previews/)")
    p.add_argument("--encoder", default=None, help="smp encoder: resnet18 (default), resnet34, resnet50, ...")
    p.add_argument("--epochs", type=int, default=10, help="passes over all slices (default 10; ignored with --steps)")
    p.add_argument("--steps", type=int, default=None, help="number of training steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=None, help="side of the square crops in pixels (default 128)")
    p.add_argument("--in-channels", type=int, choices=(1, 3), default=None, help="1 slice, or 3 adjacent slices (2.5D)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--devices", default="auto", help="auto, cpu, cpu:N, gpu, gpu:N or a number of devices")
    p.add_argument("--strategy", default="auto", choices=("auto", "ddp"), help="ddp for several devices/nodes (also under torchrun)")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--precision", default="32", help="32, 16-mixed or bf16-mixed")
    p.add_argument("--pairs", default="augment", choices=("augment", "micle", "position"),
                   help="joint-embedding positives: two augmentations of a slice (augment), two slices of the same patient/study (micle), "
                        "or slices at the same relative depth of two volumes (position)")
    p.add_argument("--init", metavar="PATH",
                   help="start from these encoder weights (model folder or .safetensors); 3-channel first layers are summed to 1")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="method option (repeatable; see `napari-ssl methods -v`)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.ckpt")
    p.add_argument("--cache-dir", help="also keep the decoded, normalised volumes here (.npy) for later runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes (default 0)")
    p.add_argument("--preview-every", type=float, default=30.0, metavar="SECONDS", help="write previews/*.png this often (0: only at the end)")


def parse_opts(items: list[str]) -> dict[str, str]:
    from ..errors import NapariSSLError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise NapariSSLError(f"--opt {item!r}: write KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def build_config(args: argparse.Namespace):
    from ..errors import NapariSSLError
    from ..models.checkpoint import read_meta
    from ..train.pretrain import PretrainConfig

    saved = read_meta(args.out) if args.resume and os.path.isfile(os.path.join(args.out, "model.json")) else {}
    method = args.method or saved.get("method")
    if not method:
        raise NapariSSLError("--method is required (see `napari-ssl methods`)")
    if not args.data:
        raise NapariSSLError("--data is required: DICOM folders, NIfTI files or folders of them")
    options = dict(saved.get("options") or {}) if args.resume and not args.opt else {}
    options.update(parse_opts(args.opt))
    if args.resume and saved.get("options"):
        from ..pretext import get_method

        known = get_method(method).options
        options = {k: v for k, v in options.items() if k in known}
    return PretrainConfig(
        method=method, data=list(args.data), out=args.out,
        encoder=args.encoder or saved.get("encoder_name") or "resnet18",
        in_channels=int(args.in_channels or saved.get("in_channels") or 1),
        image_size=int(args.image_size or saved.get("image_size") or 128),
        epochs=args.epochs, steps=args.steps or (saved.get("total_steps") if args.resume and args.epochs == 10 else None),
        batch_size=args.batch_size, lr=args.lr, devices=args.devices, strategy=args.strategy, num_nodes=args.num_nodes,
        precision=args.precision, init=args.init,
        pairs=args.pairs if not (args.resume and saved.get("pairs") and args.pairs == "augment") else saved["pairs"],
        options=options, resume=args.resume, seed=args.seed, preview_every_s=args.preview_every, num_workers=args.num_workers,
        cache_dir=args.cache_dir,
    )


def run(args: argparse.Namespace) -> int:
    import warnings

    warnings.filterwarnings("ignore", message=".*treespec.*")  # pytorch-lightning vs newer torch, harmless
    from ..progress_print import PretrainPrinter
    from ..train.pretrain import run_pretraining

    config = build_config(args)
    printer = PretrainPrinter(sys.stderr)
    run_pretraining(config, events=printer)
    return 0
