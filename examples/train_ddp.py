"""FLOAT training with DistributedDataParallel: convert first, then wrap.

    torchrun --nproc_per_node=4 examples/train_ddp.py --model resnet18 --epochs 10 --out runs/ddp
    torchrun --nproc_per_node=2 examples/train_ddp.py --backend gloo --device cpu ...   # CPU, e.g. in CI

Every rank samples the same λ (the sampler depends only on seed and step), the data is sharded with a
DistributedSampler, and λ = 0 steps (no α, no adversarial BatchNorm in the graph) are handled by
floatify.float_loss, so DDP needs no ``find_unused_parameters``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

import floatify
from floatify.data import default_eps, load_dataset
from floatify.models import create_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet18")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64, help="per rank")
    p.add_argument("--max-steps", type=int, default=None, help="stop each epoch after this many steps (smoke runs)")
    p.add_argument("--strategy", default="oat", help="oat (default here: a random λ per step shows that every "
                                                  "rank draws the same one), paired (the library default), ...")
    p.add_argument("--steps", type=int, default=7, help="PGD steps")
    p.add_argument("--backend", default="nccl" if torch.cuda.is_available() else "gloo")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if args.device == "cuda" else \
        torch.device("cpu")
    torch.manual_seed(0)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    data = load_dataset(args.dataset, image_size=args.image_size)
    if args.max_steps is not None:
        data.train = torch.utils.data.Subset(data.train, range(args.max_steps * args.batch_size * world))
    model = floatify.convert(create_model(args.model, data.num_classes)).to(device)
    model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = DistributedSampler(data.train, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data.train, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    history = floatify.fit(model, loader, epochs=args.epochs, strategy=args.strategy, steps=args.steps,
                           eps=default_eps(args.dataset), checkpoint_dir=args.out, progress=rank == 0)
    args.out.mkdir(parents=True, exist_ok=True)
    # parameters only: BatchNorm running statistics are per-rank buffers by design
    torch.save({k: v.detach().cpu() for k, v in model.module.named_parameters()}, args.out / f"rank{rank}.pt")
    if rank == 0:
        print("lam per step:", [r["lam_counts"] for r in history])
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
