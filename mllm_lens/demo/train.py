"""Train the demo model from scratch: ``python -m mllm_lens.demo.train``.

Deterministic for a seed. Flags are pre-rendered (``--renderings`` per country) and
preprocessed once by the model's own image processor; each step draws one question form
(template x paraphrase, so sequences in a batch have one length), a batch of countries and
renderings, and minimises the cross-entropy of the answer token and the EOS after it. Like
LLaVA's feature-alignment stage, the first ``--identity-steps`` steps ask only "which country
is this flag?": without it the decoder settles on text-only priors (yes/no, the most common
continent) and never learns to read the image. After it, half of the batches ask the
two-constraint yes/no questions, which need the most training (the visual fact must be compared
with the textual constraint).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mllm_lens.data import world
from mllm_lens.demo.build import MODEL_DIR, build_demo_model, prompt_ids
from mllm_lens.io import atomic_path


def render_pool(processor, countries: list[str], renderings: int, seed: int) -> torch.Tensor:
    """``[countries, renderings, 3, H, W]`` pixel values from the model's image processor."""
    rng = random.Random(seed)
    images = [world.render_flag(c, rng) for c in countries for _ in range(renderings)]
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    return pixels.view(len(countries), renderings, *pixels.shape[1:])


def question_forms() -> list[tuple[world.Template, int]]:
    return [(t, p) for t in world.TEMPLATES for p in range(len(t.paraphrases))]


def make_batch(tokenizer, n_image: int, countries: list[str], form, rng: random.Random, with_answer: bool):
    """input ids ``[B, T]`` and answers for one question form over ``countries``."""
    template, paraphrase = form
    ids, answers = [], []
    for country in countries:
        record = world.make_record(country, template, paraphrase, rng, render=False)
        answers.append(record.answer)
        ids.append(prompt_ids(tokenizer, record.question, n_image, record.answer if with_answer else None))
    return torch.tensor(ids), answers


def train(
    steps: int,
    batch: int,
    renderings: int,
    seed: int,
    lr: float,
    out: Path | None,
    log_every: int = 100,
    identity_steps: int = 400,
    two_constraint_share: float = 0.5,
):
    """Train a fresh demo model; returns ``(model, processor, loss curve)`` and saves to ``out``."""
    torch.manual_seed(seed)
    model, processor = build_demo_model(seed)
    tokenizer = processor.tokenizer
    n_image = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    countries = world.training_countries()
    pool = render_pool(processor, countries, renderings, seed)
    forms = question_forms()
    identity_forms = [f for f in forms if f[0].relation == "country"]
    two_constraint_forms = [f for f in forms if "{textual}" in f[0].paraphrases[0]]
    one_constraint_forms = [f for f in forms if f not in two_constraint_forms]
    rng = random.Random(seed)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    model.train()
    curve, start, running = [], time.time(), 0.0
    bar = tqdm(range(steps), desc="training demo model", unit="step")
    for step in bar:
        picks = [rng.randrange(len(countries)) for _ in range(batch)]
        if step < identity_steps:
            form = rng.choice(identity_forms)
        else:
            form = rng.choice(two_constraint_forms if rng.random() < two_constraint_share else one_constraint_forms)
        ids, _ = make_batch(tokenizer, n_image, [countries[i] for i in picks], form, rng, True)
        pixels = torch.stack([pool[i, rng.randrange(renderings)] for i in picks])
        logits = model(input_ids=ids[:, :-1], pixel_values=pixels).logits[:, -2:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, -2:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            curve.append({"step": step + 1, "loss": round(running, 4), "seconds": round(time.time() - start, 1)})
            bar.set_postfix(loss=f"{running:.3f}")
    model.eval()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        processor.save_pretrained(out)
        with atomic_path(out / "training_curve.json") as tmp:
            tmp.write_text(
                json.dumps(
                    {"steps": steps, "batch": batch, "renderings": renderings, "seed": seed, "lr": lr, "curve": curve},
                    indent=1,
                )
            )
    return model, processor, curve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--renderings", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--identity-steps", type=int, default=400)
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    args = parser.parse_args(argv)
    _, _, curve = train(
        args.steps, args.batch, args.renderings, args.seed, args.lr, args.out, identity_steps=args.identity_steps
    )
    print(json.dumps({"final_loss": curve[-1]["loss"], "seconds": curve[-1]["seconds"], "out": str(args.out)}))


if __name__ == "__main__":
    main()
