"""avjax input pipeline: media decoding, face detection, features, TFDS builders,
actor-independent splits and Grain loaders.

Everything a model sees is computed here once, so that `prepare` (training data)
and `predict` (serving) call the same functions.
"""
