"""``stableface build-default``: rebuild the bundled default avatar from its seed."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from stableface.argtypes import PRESET_NAMES, positive_int


def add_build_default_parser(sub: Any) -> None:
    build = sub.add_parser(
        "build-default",
        epilog="example: stableface build-default --out /tmp/default_avatar",
        help="rebuild the bundled default avatar from a seed (project-made data only)",
        description="Generate the synthetic astronaut talking face, prepare it, train the renderer (then "
        "the renderer with the adaptive smoothing) on it, train the audio model on a corpus of augmented "
        "generated speech, and write the bundle. Deterministic from --seed on a given machine and library "
        "versions; about 55 minutes on 2 CPU cores (the `mini` preset: about 35). The folder is replaced "
        "only once the new bundle is complete.",
    )
    build.add_argument(
        "--out", type=Path, help="bundle folder (default: engines/default_avatar, the one `serve` loads)"
    )
    build.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    build.add_argument("--preset", choices=PRESET_NAMES, help="network sizes (default: the recipe's, live)")
    build.add_argument("--renderer-steps", type=positive_int, help="renderer steps (default: the recipe's)")
    build.add_argument("--audio-steps", type=positive_int, help="audio model steps (default: the recipe's)")
    build.add_argument(
        "--utterances", type=positive_int, help="utterances in the speech corpus (default: the recipe's)"
    )
    build.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    build.set_defaults(handler=cmd_build_default)


def cmd_build_default(args: argparse.Namespace) -> int:
    from engines.bundle import DEFAULT_AVATAR_DIR
    from offline_training.default_avatar.recipe import DefaultAvatarRecipe, build_default_avatar

    recipe = DefaultAvatarRecipe(seed=args.seed)
    if args.preset is not None:
        recipe = dataclasses.replace(recipe, preset=args.preset)
    if args.renderer_steps is not None:
        recipe = dataclasses.replace(recipe, renderer_steps=args.renderer_steps)
    corpus = recipe.corpus
    if args.audio_steps is not None:
        corpus = dataclasses.replace(corpus, steps=args.audio_steps)
    if args.utterances is not None:
        corpus = dataclasses.replace(corpus, utterances=args.utterances)
    recipe = dataclasses.replace(recipe, corpus=dataclasses.replace(corpus, seed=args.seed))
    report = build_default_avatar(args.out or DEFAULT_AVATAR_DIR, recipe, show_progress=not args.quiet)
    parts = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in report.seconds.items())
    print(
        f"default avatar: {report.out} ({report.size_bytes / 1e6:.1f} MB; {parts}; mouth motion explained "
        f"by the opening {report.opening_fit_explained:.1%}, audio loss {report.audio_loss:.3f})"
    )
    return 0
