"""FLOAT on several processes from your own script: floatify.distributed + floatify.fit (convert, then wrap).

    torchrun --nproc-per-node 4 examples/train_ddp.py --model resnet18 --epochs 10 --out runs/ddp  # one per GPU
    torchrun --nproc-per-node 2 examples/train_ddp.py --device cpu --out runs/ddp                  # CPU (gloo)

Rank 0 saves the model (``floatify.save``; ``floatify.load(out)`` reads it). The CLI does all this and evaluates:
``torchrun --nproc-per-node 4 -m floatify train ...``.
"""

import argparse

import torch
from torch.utils.data import DataLoader, Subset

import floatify
import floatify.distributed as fd
from floatify.data import default_eps, load_dataset
from floatify.models import create_model

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--model", default="resnet18")
p.add_argument("--epochs", type=int, default=1)
p.add_argument("--batch-size", type=int, default=64, help="per process")
p.add_argument("--train-limit", type=int, default=None, help="train on the first N digits only (smoke runs)")
p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
p.add_argument("--out", required=True)
args = p.parse_args()

launch = fd.launch_from_environment()
device = fd.local_device(launch, args.device)  # cuda:LOCAL_RANK under torchrun
data = load_dataset("digits", image_size=16)
train = data.train if args.train_limit is None else Subset(data.train, range(args.train_limit))
torch.manual_seed(0)  # identical initial weights on every rank
model = floatify.convert(create_model(args.model, data.num_classes)).to(device)
with fd.process_group(launch, device):  # NCCL or gloo; torn down at the end, also on an error
    sampler = fd.shard(train, seed=0)  # each rank its share (None in one process)
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler, shuffle=sampler is None, drop_last=True)
    floatify.fit(fd.wrap(model, device), loader, epochs=args.epochs, eps=default_eps("digits"), progress=launch.is_main)
if launch.is_main:
    floatify.save(model, args.out, training={"dataset": "digits", "image_size": 16, "eps": default_eps("digits")})
