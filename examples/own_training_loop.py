"""The binary layer and the CIBHash loss in your own training loop (any encoder, any data).

    python examples/own_training_loop.py --steps 200

Two noisy views of the same random "image" must get the same code; the codes of different images
differ. The loop prints the loss, then how often a view's nearest code is its twin's.
"""

import argparse

import torch
from torch import nn

import cibhash_ext as ch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--bits", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)

    images = torch.randn(512, 64)                         # stand-ins for your data
    encoder = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, args.bits))
    binary = ch.StochasticBinaryLayer()                   # sampled bits, straight-through gradient
    loss_fn = ch.CIBHashLoss(temperature=0.3, beta=1e-3)  # NT-Xent on codes + the KL term
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-3)

    def view(x):
        return x + 0.3 * torch.randn_like(x)

    for step in range(args.steps):
        batch = images[torch.randint(0, len(images), (128,))]
        z1, z2 = encoder(view(batch)), encoder(view(batch))
        loss = loss_fn(binary(z1), binary(z2), z1, z2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.4f}")

    binary.eval()
    with torch.no_grad():
        codes1 = ch.pack_bits(encoder(view(images)))         # packed uint8 codes, FAISS layout
        codes2 = ch.pack_bits(encoder(view(images)))
    _, nearest = ch.hamming_topk(codes1, codes2, 1)
    twins = (nearest[:, 0] == torch.arange(len(images))).float().mean().item()
    print(f"a view's nearest code is its twin's for {twins:.1%} of {len(images)} images")


if __name__ == "__main__":
    main()
