"""media: probing and decoding real fixtures, clear one-line errors for bad files,
and a write/read round trip."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from input_pipeline import media
from input_pipeline.errors import InputError, MissingModalityError

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
FLV_DIR = FIXTURES / "crema_d" / "VideoFlash"
NO_AUDIO_MP4 = FIXTURES / "ravdess" / "video_no_audio" / "01-01-08-02-01-01-19.mp4"
RAVDESS_WAV = FIXTURES / "ravdess" / "Actor_01" / "03-01-01-01-01-01-01.wav"

needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared fixtures absent")


def _flv() -> Path:
  return sorted(FLV_DIR.glob("*.flv"))[0]


def _assert_one_line_naming(err: Exception, path) -> None:
  text = str(err)
  assert "\n" not in text
  assert str(path) in text
  assert len(text) < 400


@needs_fixtures
def test_probe_flv_has_audio_and_video():
  info = media.probe(_flv())
  assert info.has_video and info.has_audio
  assert (info.width, info.height) == (480, 360)   # CREMA-D VideoFlash, per fixtures README
  assert info.fps == pytest.approx(29.97, abs=0.01)
  assert info.duration > 0.5
  assert info.audio_sample_rate > 0 and info.audio_channels == 1


@needs_fixtures
def test_probe_wav_matches_soundfile():
  info = media.probe(RAVDESS_WAV)
  sf_info = soundfile.info(str(RAVDESS_WAV))
  assert not info.has_video and info.has_audio
  assert info.audio_sample_rate == sf_info.samplerate == 48000
  assert info.duration == pytest.approx(sf_info.duration, abs=0.02)


@needs_fixtures
def test_video_without_audio_raises_missing_modality():
  info = media.probe(NO_AUDIO_MP4)
  assert info.has_video and not info.has_audio
  with pytest.raises(MissingModalityError) as exc:
    media.read_audio(NO_AUDIO_MP4)
  assert exc.value.modality == "audio"
  _assert_one_line_naming(exc.value, NO_AUDIO_MP4)
  assert NO_AUDIO_MP4.name in str(exc.value)


@needs_fixtures
def test_read_audio_of_flv_agrees_with_its_duration():
  path = _flv()
  info = media.probe(path)
  audio, sr = media.read_audio(path, sample_rate=16000)
  assert sr == 16000 and audio.dtype == np.float32 and audio.ndim == 1
  assert np.abs(audio).max() <= 1.0 and np.abs(audio).max() > 0.01
  assert len(audio) / sr == pytest.approx(info.duration, abs=0.1)


@needs_fixtures
def test_read_video_frames_and_fps_options():
  path = _flv()
  info = media.probe(path)
  frames, fps = media.read_video(path)
  assert frames.dtype == np.uint8 and frames.shape[1:] == (info.height, info.width, 3)
  assert fps == pytest.approx(info.fps)
  assert len(frames) / fps == pytest.approx(info.duration, abs=0.15)
  few, _ = media.read_video(path, max_frames=5)
  assert len(few) == 5
  np.testing.assert_array_equal(few, frames[:5])
  half, half_fps = media.read_video(path, fps=info.fps / 2)
  assert half_fps == pytest.approx(info.fps / 2)
  assert abs(len(half) - len(frames) / 2) <= 2


def test_wav_only_file_has_no_video(tmp_path):
  path = tmp_path / "tone.wav"
  media.write_wav(path, np.zeros(4800, np.float32) + 0.1, 48000)
  with pytest.raises(MissingModalityError) as exc:
    media.read_video(path)
  assert exc.value.modality == "video"
  _assert_one_line_naming(exc.value, path)


def _corrupt(tmp_path) -> Path:
  path = tmp_path / "corrupt.mp4"
  path.write_bytes(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
  return path


def _empty(tmp_path) -> Path:
  path = tmp_path / "empty.mp4"
  path.write_bytes(b"")
  return path


def _truncated(tmp_path) -> Path:
  src = tmp_path / "whole.mp4"
  frames = np.random.default_rng(1).integers(0, 256, (10, 64, 96, 3), dtype=np.uint8)
  media.write_av(src, frames, 25.0, np.zeros(16000, np.float32), 16000)
  path = tmp_path / "truncated.mp4"
  path.write_bytes(src.read_bytes()[:2048])
  return path


def _missing(tmp_path) -> Path:
  return tmp_path / "does_not_exist.mp4"


@pytest.mark.parametrize("make_bad", [_corrupt, _empty, _truncated, _missing],
                         ids=["corrupt", "empty", "truncated", "missing"])
@pytest.mark.parametrize("reader", [media.probe, media.read_video, media.read_audio],
                         ids=["probe", "read_video", "read_audio"])
def test_bad_files_raise_one_line_input_error(tmp_path, make_bad, reader):
  path = make_bad(tmp_path)
  with pytest.raises(InputError) as exc:
    reader(path)
  assert not isinstance(exc.value, MissingModalityError)
  assert exc.value.path == str(path)
  _assert_one_line_naming(exc.value, path)


def _faststart_cut(tmp_path, seconds: float = 1.0) -> tuple[Path, Path]:
  """A whole faststart mp4 and its first half: the index survives the cut, the data
  does not (the case a header-only probe passes)."""
  fps, sr = 30.0, 48000
  frames, audio = _test_clip(seconds, fps, sr)
  frames = np.random.default_rng(2).integers(0, 256, frames.shape, dtype=np.uint8)
  whole = tmp_path / "whole.mp4"
  media.write_av(whole, frames, fps, audio, sr)
  faststart = tmp_path / "faststart.mp4"
  subprocess.run([media.ffmpeg_exe(), "-v", "error", "-i", str(whole), "-c", "copy",
                  "-movflags", "+faststart", str(faststart)], check=True)
  cut = tmp_path / "cut.mp4"
  data = faststart.read_bytes()
  cut.write_bytes(data[:len(data) // 2])
  return faststart, cut


def test_mp4_cut_after_its_index_raises(tmp_path):
  """A faststart mp4 (index first) cut in half still probes, but must not decode
  silently to half a clip."""
  _, cut = _faststart_cut(tmp_path)
  assert media.probe(cut).has_video       # the index is intact...
  for reader in (media.read_video, media.read_audio):
    with pytest.raises(InputError) as exc:  # ...but the data is not
      reader(cut)
    _assert_one_line_naming(exc.value, cut)
    assert "truncated" in str(exc.value)


def test_check_stream_accepts_what_the_readers_accept_and_refuses_the_rest(tmp_path):
  """check_stream (no decode) agrees with read_video / read_audio (decode)."""
  whole, cut = _faststart_cut(tmp_path)
  for modality in ("video", "audio"):
    media.check_stream(whole, modality)
    with pytest.raises(InputError) as exc:
      media.check_stream(cut, modality)
    _assert_one_line_naming(exc.value, cut)
    assert "truncated" in str(exc.value)
  sr = 16000
  wav = tmp_path / "whole.wav"
  soundfile.write(str(wav), np.zeros(sr, np.float32), sr, subtype="PCM_16")
  media.check_stream(wav, "audio")
  short = tmp_path / "short.wav"  # The header still declares 1 s.
  short.write_bytes(wav.read_bytes()[:44 + sr])
  with pytest.raises(InputError, match="truncated"):
    media.read_audio(short)
  with pytest.raises(InputError, match="truncated"):
    media.check_stream(short, "audio")
  with pytest.raises(MissingModalityError):
    media.check_stream(wav, "video")
  with pytest.raises(InputError, match="file not found"):
    media.check_stream(tmp_path / "missing.mp4", "video")


@needs_fixtures
def test_check_stream_finds_no_audio_track_in_the_real_fixture():
  media.check_stream(NO_AUDIO_MP4, "video")
  with pytest.raises(MissingModalityError):
    media.check_stream(NO_AUDIO_MP4, "audio")


@needs_fixtures
def test_truncated_real_mp4_raises(tmp_path):
  path = tmp_path / "cut.mp4"
  path.write_bytes(NO_AUDIO_MP4.read_bytes()[:2048])
  with pytest.raises(InputError) as exc:
    media.read_video(path)
  _assert_one_line_naming(exc.value, path)


def _test_clip(seconds: float, fps: float, sr: int):
  """Smoothly moving gradient frames (compress well, so lossy error stays small)
  and a two-tone signal."""
  n = int(round(seconds * fps))
  h, w = 72, 128
  yy, xx = np.mgrid[0:h, 0:w]
  frames = np.stack([(np.stack([xx * 2 + 3 * i, yy * 3, (xx + yy + 5 * i)], -1) % 256)
                     for i in range(n)]).astype(np.uint8)
  t = np.arange(int(round(seconds * sr))) / sr
  audio = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1234 * t))
  return frames, audio.astype(np.float32)


def test_write_av_round_trip(tmp_path):
  fps, sr, seconds = 30.0, 48000, 2.0
  frames, audio = _test_clip(seconds, fps, sr)
  path = tmp_path / "out" / "clip.mp4"
  media.write_av(path, frames, fps, audio, sr)
  assert [p.name for p in path.parent.iterdir()] == ["clip.mp4"]   # no temp left behind
  info = media.probe(path)
  assert info.has_video and info.has_audio
  assert info.video_codec == "h264" and info.audio_codec == "aac"
  assert (info.width, info.height, info.fps) == (128, 72, fps)
  got, got_fps = media.read_video(path)
  assert got.shape == frames.shape and got_fps == fps
  # Lossy, but close: a smooth image survives H.264 at high quality.
  assert np.abs(got.astype(np.int16) - frames).mean() < 6.0
  got_audio, got_sr = media.read_audio(path)
  assert got_sr == sr
  assert abs(len(got_audio) - len(audio)) <= sr * 0.005
  spectrum = np.abs(np.fft.rfft(got_audio))
  freqs = np.fft.rfftfreq(len(got_audio), 1 / sr)
  assert abs(freqs[spectrum.argmax()] - 440) < 2


def test_write_av_is_deterministic_and_atomic(tmp_path):
  frames, audio = _test_clip(0.5, 30.0, 48000)
  a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
  media.write_av(a, frames, 30.0, audio, 48000)
  media.write_av(b, frames, 30.0, audio, 48000)
  assert a.read_bytes() == b.read_bytes()
  # When the final rename fails (the target is a non-empty directory), the encoded
  # temp file is removed: nothing but the pre-existing entry is left.
  blocked = tmp_path / "out" / "clip.mp4"
  blocked.mkdir(parents=True)
  (blocked / "keep").write_text("x")
  with pytest.raises(OSError):
    media.write_av(blocked, frames, 30.0, audio, 48000)
  assert [p.name for p in blocked.parent.iterdir()] == ["clip.mp4"]
  assert blocked.is_dir()


def test_write_wav_is_16_bit_mono_and_reads_back(tmp_path):
  sr = 48000
  audio = (0.5 * np.sin(2 * np.pi * 300 * np.arange(sr) / sr)).astype(np.float32)
  path = tmp_path / "x.wav"
  media.write_wav(path, audio, sr)
  info = soundfile.info(str(path))
  assert (info.samplerate, info.channels, info.subtype) == (sr, 1, "PCM_16")
  back, back_sr = media.read_audio(path)
  assert back_sr == sr
  np.testing.assert_allclose(back, audio, atol=1.0 / 32768 + 1e-6)
  resampled, rs = media.read_audio(path, sample_rate=16000)
  assert rs == 16000 and abs(len(resampled) - sr // 3) <= 2


def test_wav_with_no_samples_raises(tmp_path):
  path = tmp_path / "silent.wav"
  media.write_wav(path, np.zeros(0, np.float32), 48000)
  assert path.stat().st_size > 0            # a valid header, but no audio
  with pytest.raises(InputError) as exc:
    media.read_audio(path)
  _assert_one_line_naming(exc.value, path)
  assert "no samples" in str(exc.value)


def test_read_video_max_side_shrinks_keeping_aspect():
  flv = sorted((FIXTURES / "crema_d" / "VideoFlash").glob("*.flv"))[0]
  info = media.probe(flv)
  full, fps = media.read_video(flv, max_frames=3)
  small, fps_small = media.read_video(flv, max_frames=3, max_side=info.width // 2)
  assert full.shape[1:3] == (info.height, info.width)
  assert max(small.shape[1:3]) <= info.width // 2
  assert abs(small.shape[2] / small.shape[1] - info.width / info.height) < 0.05
  assert fps_small == fps and len(small) == len(full)


def _wav_cut(tmp_path, keep: float) -> tuple[Path, float, float]:
  """A 16-bit 1.5 s wav with only `keep` of its samples left after the header:
  (path, seconds its header declares, seconds of samples left)."""
  sr, n = 16000, 24000
  whole = tmp_path / "whole.wav"
  soundfile.write(whole, 0.1 * np.ones(n, np.float32), sr, subtype="PCM_16")
  data = whole.read_bytes()
  start = data.index(b"data") + 8
  kept = int(n * keep)
  path = tmp_path / "cut.wav"
  path.write_bytes(data[:start + 2 * kept])
  return path, n / sr, kept / sr


def test_wav_cut_short_raises_truncated(tmp_path):
  path, declared, left = _wav_cut(tmp_path, 0.5)
  with pytest.raises(InputError) as exc:
    media.read_audio(path)
  _assert_one_line_naming(exc.value, path)
  assert exc.value.cause == (f"truncated file (header says {declared:.2f} s, data ends "
                             f"at {left:.2f} s)")


def test_wav_a_few_samples_short_still_reads(tmp_path):
  """Within the tolerance: only a file that ends well before its header says fails."""
  path, declared, left = _wav_cut(tmp_path, 0.99)
  assert declared - left < media.TRUNCATION_MIN_SECONDS
  audio, sr = media.read_audio(path)
  assert len(audio) == round(left * sr)


@needs_fixtures
def test_flv_cut_short_raises_truncated(tmp_path):
  """A CREMA-D flv cut in half still probes at its full duration (the metadata
  says so) and decodes to half: both readers must refuse it."""
  src = _flv()
  path = tmp_path / src.name
  path.write_bytes(src.read_bytes()[:src.stat().st_size // 2])
  declared = media.probe(src).duration
  assert media.probe(path).duration == declared
  for reader in (media.read_audio, media.read_video):
    with pytest.raises(InputError) as exc:
      reader(path)
    _assert_one_line_naming(exc.value, path)
    assert exc.value.cause.startswith(f"truncated file (header says {declared:.2f} s")


def test_audio_track_shorter_than_the_video_is_not_truncation(tmp_path):
  """The container's duration is the video's; the audio ends well before it, yet
  the file is whole: the check looks at where every stream's data ends."""
  fps, sr = 30.0, 16000
  frames, _ = _test_clip(1.5, fps, sr)
  _, audio = _test_clip(0.5, fps, sr)
  path = tmp_path / "short_audio.mp4"
  media.write_av(path, frames, fps, audio, sr)
  got, got_sr = media.read_audio(path)
  assert abs(len(got) / got_sr - len(audio) / sr) < 0.05
  assert len(media.read_video(path)[0]) == len(frames)


def test_text_named_mp4_is_not_called_truncated(tmp_path):
  text = tmp_path / "notes.mp4"
  text.write_text("file,label,actor\nclips/a.mp4,happy,1\n")
  cut = _truncated(tmp_path)  # A real mp4 cut before its index (moov).
  with pytest.raises(InputError) as exc:
    media.probe(text)
  _assert_one_line_naming(exc.value, text)
  assert "not an mp4" in exc.value.cause and "truncated" not in exc.value.cause
  with pytest.raises(InputError) as exc:
    media.probe(cut)
  assert "truncated" in exc.value.cause and "moov" in exc.value.cause
