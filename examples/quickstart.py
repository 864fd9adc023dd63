"""Convert a timm model, look at what changed, and run it at several operating points.

    python examples/quickstart.py
"""

import timm
import torch

import floatify

torch.manual_seed(0)
model = floatify.convert(timm.create_model("resnet18", num_classes=10)).eval()
print(floatify.summary(model))

x = torch.rand(4, 3, 32, 32)
with torch.no_grad():
    reference = model(x)
    for value in (0.0, 0.25, 0.5, 1.0):
        with floatify.lam(value):
            out = model(x)
        print(f"λ = {value:4.2f}: mean |logit change| vs λ = 0: {(out - reference).abs().mean():.4f}")

plain = floatify.freeze(model, lam=0.3, seed=0)
print("frozen:", type(plain.conv1).__name__, "- keys identical to the original:",
      set(plain.state_dict()) == set(timm.create_model("resnet18", num_classes=10).state_dict()))
