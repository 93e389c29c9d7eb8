"""Print text a GPT checkpoint writes after a prompt, in either backend.

The model reads the last block_size characters (the prompt and what it wrote so far) and the
next character is drawn from softmax(logits / temperature) by inverting its CDF at a uniform
from (--seed, position): both backends write the same text wherever their logits agree to
rounding (jaxnet.text.generate). --temperature 0 takes the most likely character.
"""

from __future__ import annotations

import argparse

from jaxnet.argtypes import finite_float, nonneg_int
from jaxnet.cli._common import add_backend, add_checkpoint, add_corpus_dir, load_backend


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint(p)
    p.add_argument("--prompt", required=True, help="the text to continue (characters of the corpus)")
    p.add_argument("--tokens", type=nonneg_int, default=200,
                   help="characters to write after the prompt (default: %(default)s)")  # fmt: skip
    p.add_argument("--temperature", type=finite_float, default=0.8,
                   help="divides the logits before sampling; 0: the argmax (default: %(default)s)")  # fmt: skip
    p.add_argument("--top-k", type=nonneg_int, default=0,
                   help="sample among the k most likely characters only (default: 0, all)")  # fmt: skip
    p.add_argument("--seed", type=nonneg_int, default=0, help="the sampler's uniforms (default: %(default)s)")
    add_backend(p)
    add_corpus_dir(p)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jaxnet import registry, text
    from jaxnet.errors import JaxnetError

    if args.temperature < 0:
        parser.error(f"--temperature must be >= 0, got {args.temperature}")
    backend = load_backend(args)
    config = backend.config
    if registry.family(config).data != registry.TEXT:
        raise JaxnetError(
            f"{args.checkpoint}: a {config.kind} checkpoint; generate needs a text model (--model gpt)"
        )
    corpus = text.load(args.corpus_dir)
    if config.vocab_size != corpus.vocab_size:
        raise JaxnetError(
            f"{args.checkpoint}: vocab_size {config.vocab_size}, the corpus has {corpus.vocab_size}"
        )
    prompt = corpus.encode(args.prompt)
    ids = text.generate(
        backend.predict,
        prompt,
        args.tokens,
        block_size=config.block_size,
        seed=args.seed,
        temperature=args.temperature,
        top_k=args.top_k or None,
    )
    print(args.prompt + corpus.decode(ids))
    return 0
