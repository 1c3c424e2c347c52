"""`napari-ssl finetune`: train a U-Net on the annotated slices of one or more label volumes."""
from __future__ import annotations

HELP = "fine-tune a U-Net on sparsely annotated slices (from a pretrained encoder, a previous model, or random)"


def add_arguments(p) -> None:
    p.add_argument("--image", action="append", required=True, metavar="PATH",
                   help="image volume (NIfTI/NRRD file or DICOM series folder); repeat for several")
    p.add_argument("--labels", action="append", required=True, metavar="PATH",
                   help="label map on that image's grid (0 = background / not annotated), NIfTI/NRRD/MHA, a DICOM-SEG or an RTSTRUCT of "
                        "that series (its segment labels / ROI names name the classes unless --classes is given); one per --image")
    p.add_argument("--out", required=True, metavar="DIR", help="output model folder (model.safetensors + model.json)")
    p.add_argument("--encoder-weights", metavar="PRETRAIN_DIR", help="pretraining output folder (or encoder .safetensors) to start the encoder from")
    p.add_argument("--init-model", metavar="DIR", help="warm-start from a previous fine-tuned model (active-learning rounds)")
    p.add_argument("--encoder", help="smp encoder name (default: the pretrained one, else the compact U-Net on a CPU, resnet18 on a GPU)")
    p.add_argument("--in-channels", type=int, choices=(1, 3), help="1 = single slice, 3 = 2.5D (default: the pretrained model's, else 1)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int, help="passes over the annotated slices")
    g.add_argument("--steps", type=int, help="optimiser steps (default: about a minute of training, 300-600 by tile size; 500 with --no-auto)")
    p.add_argument("--classes", metavar="NAMES", help='names of labels 1..N, e.g. "anterior,posterior"')
    p.add_argument("--rois", metavar="NAMES",
                   help="RTSTRUCT --labels: the ROIs to take, in order (label values 1, 2, ...; later ones win where they overlap), "
                        'e.g. "liver,urinary_bladder"')
    p.add_argument("--empty-slices", action="append", metavar="LIST", help="slices annotated as empty (e.g. 3,17 or 3-5); once per --labels")
    p.add_argument("--loss", choices=("dice-ce", "jaccard"), default="dice-ce")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, help="tile size fed to the network, a multiple of 32 (default: chosen from the scan and the labels)")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate (default 3e-3, the benchmarks' rate)")
    p.add_argument("--encoder-lr-scale", type=float, default=1.0, help="encoder learning rate = lr x this (e.g. 0.1 to protect pretrained features)")
    p.add_argument("--freeze-encoder-steps", type=int, default=0, help="train only the decoder for the first N steps")
    p.add_argument("--transfer-decoder", action="store_true", help="also start the decoder from the pretrained U-Net (in-painting-type methods)")
    p.add_argument("--no-augment", action="store_true", help="turn off flips / affine / intensity augmentation")
    p.add_argument("--devices", default="auto", help='"auto", "cpu", a GPU count or a list such as 0,1')
    p.add_argument("--precision", default="32", help='"32", "16-mixed" or "bf16-mixed"')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-semi-supervised", action="store_true",
                   help="train on the annotated slices only (default: the unannotated slices and --unlabelled volumes also train, "
                        "through pseudo-labels kept in memory for the run)")
    p.add_argument("--unlabelled", action="append", default=[], metavar="PATH",
                   help="an unlabelled volume that also trains (semi-supervised); repeat for several")
    p.add_argument("--no-auto", action="store_true", help="do not choose the crop, tile size, CT window and encoder from the scan and the labels")


def run(args) -> int:
    import sys

    from ..data.sparse_labels import parse_class_names, parse_index_list
    from ..errors import NapariSSLError
    from ..train.finetune import FinetuneConfig, run_finetuning

    if len(args.image) != len(args.labels):
        raise NapariSSLError(f"{len(args.image)} --image but {len(args.labels)} --labels; give one --labels per --image")
    empties = None
    if args.empty_slices:
        if len(args.empty_slices) != len(args.image):
            raise NapariSSLError("give --empty-slices once per --labels (use \"\" for a volume without empty slices)")
        empties = [parse_index_list(e) for e in args.empty_slices]
    config = FinetuneConfig(images=args.image, labels=args.labels, out=args.out, encoder_weights=args.encoder_weights, init_model=args.init_model,
                            encoder=args.encoder, in_channels=args.in_channels, classes=parse_class_names(args.classes), empty_slices=empties,
                            epochs=args.epochs, steps=args.steps, loss=args.loss, batch_size=args.batch_size, image_size=args.image_size, lr=args.lr,
                            encoder_lr_scale=args.encoder_lr_scale, freeze_encoder_steps=args.freeze_encoder_steps,
                            transfer_decoder=args.transfer_decoder,
                            augment=not args.no_augment, devices=args.devices, precision=args.precision, seed=args.seed,
                            rois=[r.strip() for r in args.rois.split(",") if r.strip()] if args.rois else None,
                            semi_supervised=not args.no_semi_supervised, unlabelled=list(args.unlabelled),
                            auto=not args.no_auto)
    from ..progress_print import FinetunePrinter

    out = run_finetuning(config, events=FinetunePrinter(sys.stderr))
    from ..models.checkpoint import read_meta

    meta = read_meta(out)
    dice = ", ".join(f"{k} {v:.3f}" for k, v in meta["metrics"]["train_dice"].items())
    n = sum(len(t["slices"]) for t in meta["training_slices"])
    print(f"saved {out} ({meta['encoder_name']}, {n} annotated slice(s), {meta['training']['steps']} steps; Dice on the annotated slices: {dice})")
    return 0
