"""The embedded synthetic corpus: RAVDESS-format audio-video takes rendered from
scratch, so the demo and tests run the real pipeline with no download."""

from __future__ import annotations

from input_pipeline.synth.corpus import SynthReport, generate_corpus, synth_clip, takes_for
from input_pipeline.synth.profile import FPS, HEIGHT, SAMPLE_RATE, WIDTH, ClipPlan, plan_clip

__all__ = ["ClipPlan", "FPS", "HEIGHT", "SAMPLE_RATE", "SynthReport", "WIDTH",
           "generate_corpus", "plan_clip", "synth_clip", "takes_for"]
