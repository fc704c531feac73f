"""Frames from video files with PyAV (FFmpeg bundled in its wheel), sampled at a rate.

Frames are decoded one at a time and handed on in small batches, so memory stays bounded by the
batch whatever the video's length; the batch shrinks for large frames so that one batch never
holds more than MAX_BATCH_BYTES of pixels (32 frames of 4K would be 800 MB). A frame is kept when its presentation time
reaches the next sampling instant (0, 1/rate, 2/rate, ... seconds from the first frame), so the
sampled times are the video's own timestamps, not guesses from a nominal frame rate. Packets
FFmpeg cannot decode mid-stream are skipped and counted (`VideoFrames.bad_packets`); a file
that cannot be opened, has no video stream or yields no frame at all raises VideoError.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


MAX_BATCH_BYTES = 128 << 20


class VideoError(ValueError):
    """A video that cannot be read: one line naming the file and why."""


@dataclass
class VideoInfo:
    path: str
    duration: float  # seconds, from the container (or the last frame when the container does not say)
    fps: float  # the stream's average frame rate
    width: int
    height: int


class VideoFrames:
    """Iterate (times (N,), frames (N, H, W, 3) uint8) batches of a video sampled at `rate`
    frames per second (None: every frame). `info` is known after opening; `bad_packets` and
    `frames_read` after iterating."""

    def __init__(self, path: str, rate: float | None = 2.0, batch: int = 32):
        if rate is not None and rate <= 0:
            raise ValueError(f"the sampling rate must be positive, got {rate}")
        self.path, self.rate, self.batch = path, rate, batch
        self.bad_packets = 0
        self.frames_read = 0
        self.info = None

    def _open(self):
        import av

        try:
            container = av.open(self.path)
        except (av.FFmpegError, OSError) as e:
            raise VideoError(f"cannot read video {self.path}: {_reason(e)}") from None
        if not container.streams.video:
            container.close()
            raise VideoError(f"{self.path} has no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        duration = float(container.duration / 1e6) if container.duration else 0.0
        self.info = VideoInfo(self.path, duration, fps, stream.codec_context.width, stream.codec_context.height)
        return container, stream

    def __iter__(self):
        import av

        container, stream = self._open()
        times, frames = [], []
        next_t, t0, last_t = 0.0, None, 0.0
        batch = max(1, min(self.batch, MAX_BATCH_BYTES // max(3 * self.info.width * self.info.height, 1)))
        try:
            for packet in container.demux(stream):
                try:
                    decoded = packet.decode()
                except (av.FFmpegError, ValueError):
                    self.bad_packets += 1
                    continue
                for frame in decoded:
                    t = frame.time if frame.time is not None else self.frames_read / max(self.info.fps, 1.0)
                    t0 = t if t0 is None else t0
                    t -= t0
                    last_t = max(last_t, t)
                    if self.rate is not None and t + 1e-6 < next_t:
                        continue
                    if self.rate is not None:
                        next_t = (np.floor(t * self.rate + 1e-6) + 1) / self.rate
                    times.append(float(t))
                    frames.append(frame.to_ndarray(format="rgb24"))
                    self.frames_read += 1
                    if len(frames) >= batch:
                        yield np.asarray(times, np.float32), np.stack(frames)
                        times, frames = [], []
        except av.FFmpegError as e:  # a container-level failure mid-file: what was read stands
            self.bad_packets += 1
            if not self.frames_read and not frames:
                raise VideoError(f"cannot read video {self.path}: {_reason(e)}") from None
        finally:
            container.close()
        if frames:
            yield np.asarray(times, np.float32), np.stack(frames)
        if not self.frames_read:
            raise VideoError(f"{self.path}: no frame could be decoded")
        if not self.info.duration:
            self.info.duration = last_t + (1.0 / self.info.fps if self.info.fps else 0.0)


def _reason(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return " ".join(str(msg).split())[:200]
