"""Peer row for bench/sae.py, run with .venv-peers's Python: SAELens's own trainer
(`SAETrainer.fit`) on the activations bench/sae.py saved, same batch size, steps and lr.

    .venv-peers/bin/python bench/peers/saelens_train.py ACTS.safetensors ARCH STEPS BATCH LR OUT_DIR AUTOCAST
Prints one JSON line: {"seconds": ..., "tokens_per_s": ...}; the trained SAE is saved with
SAELens's save_inference_model into OUT_DIR (read back by mechscope.load_sae).
"""

import json
import sys
import time

import torch
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer
from safetensors.torch import load_file

path, arch, steps, batch, lr, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
autocast = sys.argv[7] == "1"
acts = load_file(path)["train"].float()
d_in = acts.shape[1]


def batches():
    generator = torch.Generator().manual_seed(0)
    while True:
        order = torch.randperm(len(acts), generator=generator)
        for start in range(0, len(order) - batch + 1, batch):
            yield acts[order[start : start + batch]]


if arch == "topk":
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=4608, k=32, decoder_init_norm=None, dtype="float32"))
else:
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=4608, l1_coefficient=5.0, dtype="float32"))
trainer = SAETrainer(SAETrainerConfig(total_training_samples=steps * batch, train_batch_size_samples=batch, lr=lr,
                                      lr_end=lr, device="cpu", autocast=autocast), sae, batches())
start = time.perf_counter()
trainer.fit()
seconds = time.perf_counter() - start
sae.save_inference_model(out)
print(json.dumps({"seconds": seconds, "tokens_per_s": steps * batch / seconds}))
