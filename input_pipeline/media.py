"""Media decoding and encoding: the one place avjax touches ffmpeg or soundfile.

`prepare`, `predict` and the synthetic corpus all go through these functions, so a
clip is decoded the same way whether it is training data or a served request.
ffmpeg is the static binary shipped by imageio-ffmpeg (no ffprobe), so probing
parses the banner that `ffmpeg -i FILE` prints to stderr.

Every failure is raised as `InputError` (or `MissingModalityError`) whose message
is one line naming the file, so callers can skip a bad clip and report why.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import subprocess
import tempfile

import numpy as np
import soundfile

from input_pipeline.errors import InputError, MissingModalityError

_WAV_EXTS = (".wav", ".wave")
# stderr lines that carry no diagnosis (banner, stream listing, usage hints).
_NOISE_PREFIXES = ("ffmpeg version", "built with", "configuration:", "lib", "Input #",
                   "Output #", "Metadata:", "Duration:", "Stream #", "Stream mapping",
                   "Press [q]", "At least one output file", "Side data:",
                   "encoder", "handler_name", "major_brand", "minor_version",
                   "compatible_brands", "vendor_id", "frame=", "size=", "video:",
                   "[out#", "Conversion failed", "Exiting normally", "Guessed Channel")


@functools.cache
def ffmpeg_exe() -> str:
  """Path of the ffmpeg binary bundled with imageio-ffmpeg."""
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  return imageio_ffmpeg.get_ffmpeg_exe()


def _last_error_line(stderr: str) -> str:
  """The last stderr line that says what went wrong, shortened to one line."""
  lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
  meaningful = [ln for ln in lines if not ln.startswith(_NOISE_PREFIXES)]
  line = (meaningful or lines or ["ffmpeg failed"])[-1]
  line = re.sub(r"^\[[^\]]*\]\s*", "", line)  # drop "[mov,mp4 @ 0x...]" tags
  return line[:200]


# How far before its declared duration a file's data may end and still count as
# whole. Decoders legitimately differ a little from the header (AAC priming, an
# audio track a few frames shorter than the video): on the shared fixtures and
# synthetic clips, decoded/declared lies between 0.997 and 1.024. A file cut in
# half decodes to about 0.5.
TRUNCATION_TOLERANCE = 0.1     # of the declared duration...
TRUNCATION_MIN_SECONDS = 0.2   # ...and never less than this


def _ends_early(declared: float | None, ends: float) -> bool:
  if not declared or declared <= 0:
    return False
  return declared - ends > max(TRUNCATION_TOLERANCE * declared, TRUNCATION_MIN_SECONDS)


def _truncated(path, declared: float, ends: float) -> InputError:
  return InputError(path, f"truncated file (header says {declared:.2f} s, data ends at "
                          f"{ends:.2f} s)")


def _wav_declared_seconds(path: str) -> float | None:
  """The duration a RIFF/WAVE header declares (data chunk size / byte rate).
  libsndfile and ffmpeg both clamp it to the bytes present, so a wav cut short
  would otherwise read as a shorter clip. None when the header does not say."""
  try:
    with open(path, "rb") as f:
      head = f.read(12)
      if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
      byte_rate = 0
      while True:
        chunk = f.read(8)
        if len(chunk) < 8:
          return None
        kind, size = chunk[:4], int.from_bytes(chunk[4:], "little")
        if kind == b"data":
          # 0 and 0xFFFFFFFF: written to a pipe, size unknown.
          if not byte_rate or size in (0, 0xFFFFFFFF):
            return None
          return size / byte_rate
        body = f.read(min(size, 16)) if kind == b"fmt " else b""
        if kind == b"fmt " and len(body) >= 12:
          byte_rate = int.from_bytes(body[8:12], "little")
        f.seek(size - len(body) + (size & 1), os.SEEK_CUR)
  except OSError:
    return None


def _data_end(path: str, maps: tuple[str, ...] = ("0:v?", "0:a?"),
              check_complete: bool = False) -> float:
  """Seconds at which the last packet of the mapped streams (by default every
  audio and video stream) ends: a demux, no decode."""
  args = ["-i", path]
  for stream in maps:
    args += ["-map", stream]
  out = _run_ffmpeg(path, [*args, "-c", "copy", "-f", "framecrc", "-"],
                    check_complete=check_complete)
  time_bases: dict[int, float] = {}
  end = 0.0
  for line in out.decode("utf-8", "replace").splitlines():
    if line.startswith("#tb "):  # "#tb 0: 1/1000"
      index, base = line[4:].split(":", 1)
      num, den = base.strip().split("/")
      time_bases[int(index)] = int(num) / int(den)
    elif line.strip() and not line.startswith("#"):
      fields = line.split(",")
      try:  # stream, dts, pts, duration, size, crc
        stream, pts, duration = int(fields[0]), int(fields[2]), int(fields[3])
      except (IndexError, ValueError):
        continue
      if stream in time_bases and pts >= 0:
        end = max(end, (pts + max(duration, 0)) * time_bases[stream])
  return end


def _check_not_truncated(path: str, info: MediaInfo, decoded: float) -> None:
  """Raises when the file's data ends well before the duration its container
  declares. A decoded stream that ends early is checked against every stream's
  packets, so a legitimately short audio (or video) track passes."""
  if info.duration_estimated or not _ends_early(info.duration, decoded):
    return
  ends = _data_end(path)
  if _ends_early(info.duration, ends):
    raise _truncated(path, info.duration, ends)


def _check_complete(path, stderr: str) -> None:
  """ffmpeg exits 0 on a file cut short after its index (e.g. a faststart mp4);
  its demuxer then reports "partial file". Treat that as the corrupt file it is."""
  if "partial file" in stderr:
    raise InputError(path, "truncated file (stream data ends before its index says)")


def _run_ffmpeg(path, args: list[str], stdin: bytes | None = None,
                check_complete: bool = False) -> bytes:
  cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", *args]
  try:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
  except OSError as e:
    raise InputError(path, f"cannot run ffmpeg: {e}") from None
  if proc.returncode != 0:
    cause = _last_error_line(proc.stderr.decode("utf-8", "replace"))
    cause = cause.replace(os.fspath(path), "").strip(" :") or "ffmpeg failed"
    raise InputError(path, f"ffmpeg: {cause}")
  if check_complete:
    _check_complete(path, proc.stderr.decode("utf-8", "replace"))
  return proc.stdout


def check_file(path) -> str:
  """A readable, non-empty regular file, else InputError naming it."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise InputError(path, "file not found")
  if not os.path.isfile(path):
    raise InputError(path, "not a regular file")
  if os.path.getsize(path) == 0:
    raise InputError(path, "empty file (0 bytes)")
  return path


@dataclasses.dataclass(frozen=True)
class MediaInfo:
  """What ffmpeg reports about a file's container and first audio/video streams."""
  path: str
  duration: float          # seconds; 0.0 if the container does not say
  has_video: bool
  has_audio: bool
  width: int | None = None
  height: int | None = None
  fps: float | None = None
  video_codec: str | None = None
  audio_codec: str | None = None
  audio_sample_rate: int | None = None
  audio_channels: int | None = None
  duration_estimated: bool = False  # ffmpeg guessed it from the bitrate (no header)


# Top-level box types an mp4/mov file can start with.
_MP4_FIRST_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot",
                    b"uuid", b"styp")


def _not_mp4_cause(path: str) -> str | None:
  """Why a file ffmpeg read as mp4 is not one at all (a renamed text file, say),
  or None when it starts like an mp4 and so was cut short."""
  with open(path, "rb") as f:
    head = f.read(512)
  if head[4:8] in _MP4_FIRST_BOXES:
    return None
  if _is_text(head):
    return "not an mp4 or other media file (it holds text, not an mp4 'ftyp' box)"
  return "not an mp4 or other media file (it does not start with an mp4 'ftyp' box)"


def _is_text(head: bytes) -> bool:
  for cut in range(4):  # The read may end inside a multi-byte character.
    try:
      text = head[:len(head) - cut].decode("utf-8")
    except UnicodeDecodeError:
      continue
    return bool(text) and all(c.isprintable() or c in "\t\r\n" for c in text)
  return False


_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_STREAM_RE = re.compile(r"Stream #\d+:\d+.*?:\s*(Video|Audio):\s*(.*)$")
_SIZE_RE = re.compile(r"(?:,|^)\s*(\d{2,5})x(\d{2,5})[\s,\[]")
_FPS_RE = re.compile(r"([\d.]+)(k?)\s+fps")
_TBR_RE = re.compile(r"([\d.]+)(k?)\s+tbr")
_RATE_RE = re.compile(r"(\d+)\s+Hz")
_ROTATE_RE = re.compile(r"rotation of (-?[\d.]+) degrees")


def _channels(desc: str) -> int | None:
  fields = [f.strip() for f in desc.split(",")]
  for field in fields[2:4]:
    if field == "mono":
      return 1
    if field == "stereo":
      return 2
    m = re.match(r"(\d+)\s+channels", field)
    if m:
      return int(m.group(1))
    m = re.match(r"(\d+)\.(\d+)", field)  # 5.1, 7.1
    if m:
      return int(m.group(1)) + int(m.group(2))
  return None


def _rate(m: re.Match | None) -> float | None:
  if not m:
    return None
  return float(m.group(1)) * (1000.0 if m.group(2) else 1.0)


def probe(path: str | os.PathLike) -> MediaInfo:
  """Reads container and stream facts; raises InputError if it is not usable media."""
  path = check_file(path)
  cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path]
  try:
    proc = subprocess.run(cmd, capture_output=True, check=False)
  except OSError as e:
    raise InputError(path, f"cannot run ffmpeg: {e}") from None
  text = proc.stderr.decode("utf-8", "replace")
  if "Input #0" not in text:
    if "moov atom not found" in text:
      raise InputError(path, _not_mp4_cause(path)
                       or "truncated or unfinished mp4 (moov atom not found)")
    cause = _last_error_line(text).replace(path, "").strip(" :")
    raise InputError(path, f"not a readable media file ({cause})")
  duration = 0.0
  m = _DURATION_RE.search(text)
  if m:
    duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
  video = audio = None
  rotation = 0.0
  for line in text.splitlines():
    sm = _STREAM_RE.search(line.strip())
    if sm:
      if sm.group(1) == "Video" and video is None:
        video = sm.group(2)
      elif sm.group(1) == "Audio" and audio is None:
        audio = sm.group(2)
    rm = _ROTATE_RE.search(line)
    if rm and video is not None:
      rotation = float(rm.group(1))
  if video is None and audio is None:
    raise InputError(path, "no audio or video stream")
  info = dict(path=path, duration=duration, has_video=video is not None,
              has_audio=audio is not None,
              duration_estimated="Estimating duration from bitrate" in text)
  if video is not None:
    size = _SIZE_RE.search(video)
    width, height = (int(size.group(1)), int(size.group(2))) if size else (None, None)
    if width and abs(rotation) % 180 == 90:
      width, height = height, width  # ffmpeg autorotates on decode
    info.update(width=width, height=height, video_codec=video.split()[0].rstrip(","),
                fps=_rate(_FPS_RE.search(video)) or _rate(_TBR_RE.search(video)))
  if audio is not None:
    rate = _RATE_RE.search(audio)
    info.update(audio_codec=audio.split()[0].rstrip(","),
                audio_sample_rate=int(rate.group(1)) if rate else None,
                audio_channels=_channels(audio))
  if info["has_video"] and not (info["width"] and info["height"]):
    raise InputError(path, "video stream has no frame size (corrupt header?)")
  return MediaInfo(**info)


def _resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
  """librosa's soxr_hq resampling, minus librosa's audio module (slow to import)."""
  from input_pipeline.features.audio import soxr_resample  # pylint: disable=g-import-not-at-top
  return soxr_resample(audio, orig_sr, target_sr).astype(np.float32)


def check_stream(path: str | os.PathLike, modality: str) -> None:
  """Raises InputError unless `path` holds a complete `modality` ("audio" or
  "video") stream, as read_audio / read_video would accept it, without decoding
  it: the header, then a demux of that stream's packets (a wav: its header's
  length against the samples present). For a take whose feature set does not
  decode this file, so that its example records what was actually usable."""
  if modality not in ("audio", "video"):
    raise ValueError(f"modality must be 'audio' or 'video', got {modality!r}")
  path = check_file(path)
  if modality == "audio" and path.lower().endswith(_WAV_EXTS):
    try:
      info = soundfile.info(path)
    except (soundfile.LibsndfileError, RuntimeError, ValueError):
      info = None  # Unusual codec or damage: ffmpeg's checks below say which.
    if info is not None:
      if not info.frames:
        raise InputError(path, "audio stream has no samples")
      declared, present = _wav_declared_seconds(path), info.frames / info.samplerate
      if _ends_early(declared, present):
        raise _truncated(path, declared, present)
      return
  info = probe(path)
  if not (info.has_audio if modality == "audio" else info.has_video):
    raise MissingModalityError(path, modality)
  ends = _data_end(path, (f"0:{modality[0]}:0",), check_complete=True)
  if ends <= 0:
    raise InputError(path, f"{modality} stream has no data")
  if not info.duration_estimated and _ends_early(info.duration, ends):
    raise _truncated(path, info.duration, ends)


def read_audio(path: str | os.PathLike,
               sample_rate: int | None = None) -> tuple[np.ndarray, int]:
  """Decodes the first audio stream to float32 mono in [-1, 1].

  wav goes through soundfile (exact samples, no subprocess); anything else is
  decoded by ffmpeg. `sample_rate=None` keeps the file's own rate.
  """
  path = check_file(path)
  audio = None
  is_wav = path.lower().endswith(_WAV_EXTS)
  if is_wav:
    try:
      data, sr = soundfile.read(path, dtype="float32", always_2d=True)
      # A mono file's mean is (0 + sample) / 1: its column plus zero, bit for bit
      # (-0.0 becomes +0.0 as in the mean), without the mean over a (n, 1) array,
      # which costs more than reading the file.
      audio = (data[:, 0] + np.float32(0.0) if data.shape[1] == 1
               else data.mean(axis=1, dtype=np.float32))
    except (soundfile.LibsndfileError, RuntimeError, ValueError):
      audio = None  # unusual wav codec or damage: let ffmpeg try and explain
  if audio is None:
    info = probe(path)
    if not info.has_audio:
      raise MissingModalityError(path, "audio")
    sr = sample_rate or info.audio_sample_rate or 48000
    raw = _run_ffmpeg(path, ["-i", path, "-map", "0:a:0", "-vn", "-ac", "1",
                             "-ar", str(sr), "-f", "f32le", "-"], check_complete=True)
    audio = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if audio.size and not is_wav:
      _check_not_truncated(path, info, audio.size / sr)
  if audio.size == 0:
    raise InputError(path, "audio stream has no samples")
  if is_wav:
    declared = _wav_declared_seconds(path)
    if _ends_early(declared, audio.size / sr):
      raise _truncated(path, declared, audio.size / sr)
  if sample_rate is not None and sr != sample_rate:
    audio, sr = _resample(audio, sr, sample_rate), sample_rate
  return np.clip(audio, -1.0, 1.0), int(sr)


def read_video(path: str | os.PathLike, fps: float | None = None,
               max_frames: int | None = None,
               max_side: int | None = None) -> tuple[np.ndarray, float]:
  """Decodes the first video stream to uint8 RGB frames (T, H, W, 3).

  `fps=None` returns the frames as stored (no duplication or dropping) at the
  stream's own rate; otherwise ffmpeg resamples the frame times to `fps`.
  `max_side` has ffmpeg shrink frames whose longer side exceeds it (aspect kept),
  so a 1280x720 RAVDESS clip does not cost 300 MB of RGB when every feature
  crops faces to at most 112 px.
  """
  path = check_file(path)
  info = probe(path)
  if not info.has_video:
    raise MissingModalityError(path, "video")
  args = ["-i", path, "-map", "0:v:0", "-an", "-sn", "-dn"]
  width, height = info.width, info.height
  filters = []
  if max_side is not None and max(width, height) > max_side:
    scale = max_side / max(width, height)
    width, height = (max(2, int(round(width * scale / 2)) * 2),
                     max(2, int(round(height * scale / 2)) * 2))
    filters.append(f"scale={width}:{height}:flags=area")
  if fps is not None:
    if fps <= 0:
      raise ValueError(f"fps must be > 0, got {fps}")
    filters.append(f"fps={fps}")
  if filters:
    args += ["-vf", ",".join(filters)]
  if fps is None:
    args += ["-fps_mode", "passthrough"]
  if max_frames is not None:
    if max_frames < 1:
      raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    args += ["-frames:v", str(max_frames)]
  args += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
  raw = _run_ffmpeg(path, args, check_complete=max_frames is None)
  frame_bytes = width * height * 3
  n = len(raw) // frame_bytes
  if n == 0:
    raise InputError(path, "video stream decoded to zero frames")
  if len(raw) % frame_bytes:
    raise InputError(path, f"decoded video size does not match {width}x{height}")
  frames = np.frombuffer(raw, dtype=np.uint8).reshape(n, height, width, 3)
  out_fps = float(fps) if fps is not None else float(info.fps or 0.0)
  if max_frames is None and out_fps > 0:
    _check_not_truncated(path, info, n / out_fps)
  return frames, out_fps


def _atomic_target(path) -> tuple[str, str]:
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  ext = os.path.splitext(path)[1]
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=ext, dir=directory)
  os.close(fd)
  os.chmod(tmp, 0o644)  # mkstemp makes 0600; the final file should be readable
  return path, tmp


def _as_pcm(audio: np.ndarray) -> np.ndarray:
  audio = np.asarray(audio, dtype=np.float32)
  if audio.ndim != 1:
    raise ValueError(f"audio must be mono (1-D), got shape {audio.shape}")
  return audio


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> None:
  """Writes 16-bit PCM mono wav, atomically (no half file under the final name)."""
  audio = np.clip(_as_pcm(audio), -1.0, 1.0)
  path, tmp = _atomic_target(path)
  try:
    soundfile.write(tmp, audio, int(sample_rate), subtype="PCM_16", format="WAV")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_av(path: str | os.PathLike, frames: np.ndarray, fps: float,
             audio: np.ndarray | None, sample_rate: int | None) -> None:
  """Encodes an mp4 (H.264 yuv420p + AAC), deterministically and atomically.

  Single-threaded encoders, bit-exact flags and no metadata make the same input
  decode to the same frames on every run; the temp-file-then-rename write means an
  interrupted run never leaves a truncated file under the final name.
  """
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} "
                     f"{frames.shape}")
  t, h, w, _ = frames.shape
  if t == 0 or h % 2 or w % 2:
    raise ValueError(f"need >= 1 frame and even width/height for yuv420p, got {frames.shape}")
  path, tmp = _atomic_target(path)
  wav_tmp = None
  try:
    args = ["-y", "-fflags", "+bitexact", "-f", "rawvideo", "-pix_fmt", "rgb24",
            "-s", f"{w}x{h}", "-r", f"{fps:.6g}", "-i", "-"]
    if audio is not None:
      _, wav_tmp = _atomic_target(os.path.splitext(path)[0] + ".wav")
      soundfile.write(wav_tmp, np.clip(_as_pcm(audio), -1.0, 1.0), int(sample_rate),
                      subtype="FLOAT", format="WAV")
      args += ["-i", wav_tmp]
    args += ["-map", "0:v:0"]
    if audio is not None:
      args += ["-map", "1:a:0", "-c:a", "aac", "-b:a", "128k", "-ac", "1",
               "-flags:a", "+bitexact"]
    args += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt",
             "yuv420p", "-threads", "1", "-x264-params", "threads=1:lookahead-threads=1",
             "-flags:v", "+bitexact", "-map_metadata", "-1", "-map_chapters", "-1",
             "-fflags", "+bitexact", "-f", "mp4", tmp]
    _run_ffmpeg(path, args, stdin=np.ascontiguousarray(frames).tobytes())
    os.replace(tmp, path)
  finally:
    for leftover in (tmp, wav_tmp):
      if leftover and os.path.exists(leftover):
        os.remove(leftover)
