"""Video analysis jobs: upload a video, analyse it in the background (shared.video.analyze_video, the same
code as `ferlive analyze`), then fetch the annotated video, CSV, summary and figures.

    POST /api/jobs                      multipart field `video` (or the raw body) -> 202 {"id", "status", "position", "url"}
    GET  /api/jobs/<id>                 status: queued (with its position) | running (progress) | done | failed
    GET  /api/jobs/<id>/files/<name>    annotated.webm, faces.csv, summary.json, overview.png, timeline_track<N>.png
    GET  /video                         the page

One job runs at a time per web process; the others wait in order and see their position. A file that OpenCV
cannot read a frame from is refused before it is queued. Finished jobs are kept (with their files) until
`JOBS_KEPT` newer ones have finished; uploads over `MAX_VIDEO_BYTES` get 413.
"""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
from flask import Blueprint, abort, current_app, jsonify, render_template, request, send_from_directory, url_for

log = logging.getLogger(__name__)

bp = Blueprint("jobs", __name__)
FILE_NAME = re.compile(r"^(annotated\.webm|faces\.csv|summary\.json|overview\.png|timeline_track\d{1,6}\.png)$")
UPLOAD_NAME = "upload.video"
CHUNK = 1 << 20


class JobError(ValueError):
    """An upload that cannot become a job; the text says what was wrong."""


@dataclass
class Job:
    id: str
    name: str
    folder: Path
    status: str = "queued"            # queued | running | done | failed
    created: float = field(default_factory=time.time)
    frames_done: int = 0
    frames_total: Optional[int] = None
    elapsed_s: float = 0.0
    error: Optional[str] = None
    summary: Optional[dict] = None


class JobQueue:
    """FIFO of video jobs run one at a time by one background thread; bounded number of finished jobs kept."""

    def __init__(self, root: Path, model_dir=None, kept: int = 20, every: int = 1,
                 max_pixels: int = 12_000_000) -> None:
        self.root = Path(root)
        self.max_pixels = max_pixels
        self.root.mkdir(parents=True, exist_ok=True)
        self.model_dir, self.kept, self.every = model_dir, kept, every
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="video-jobs", daemon=True)
        self._thread.start()

    def submit(self, name: str, save) -> Job:
        """save(path) writes the upload; the file must give OpenCV at least one frame."""
        job_id = uuid.uuid4().hex[:12]
        folder = self.root / job_id
        folder.mkdir(parents=True)
        upload = folder / UPLOAD_NAME
        try:
            save(upload)
            if upload.stat().st_size == 0:
                raise JobError("empty upload: send a video file in the `video` field or as the body")
            cap = cv2.VideoCapture(str(upload))
            try:
                if not cap.isOpened():
                    raise JobError(f"{name!r} is not a video OpenCV can read (send e.g. MP4, WebM, AVI or MKV)")
                w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
                if w * h > self.max_pixels:  # checked from the header, before any frame is decoded
                    raise JobError(f"{name!r} has {w}x{h} frames: more than {self.max_pixels} pixels "
                                   f"(FERLIVE_MAX_IMAGE_PIXELS)")
                if not cap.read()[0]:
                    raise JobError(f"{name!r} is not a video OpenCV can read (send e.g. MP4, WebM, AVI or MKV)")
            finally:
                cap.release()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        job = Job(job_id, name, folder)
        with self._wake:
            self.jobs[job_id] = job
            self._wake.notify()
        return job

    def position(self, job: Job) -> Optional[int]:
        """1 = next to run; None once it runs."""
        if job.status != "queued":
            return None
        with self._lock:
            queued = [j for j in self.jobs.values() if j.status == "queued"]
        return queued.index(job) + 1 if job in queued else None

    def get(self, job_id: str) -> Optional[Job]:
        with self._lock:
            return self.jobs.get(job_id)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()

    def _next(self) -> Optional[Job]:
        with self._wake:
            while not self._closed:
                job = next((j for j in self.jobs.values() if j.status == "queued"), None)
                if job is not None:
                    job.status = "running"
                    return job
                self._wake.wait(1.0)
        return None

    def _run(self) -> None:
        from shared.video import AnalyzeOptions, analyze_video

        while (job := self._next()) is not None:
            def progress(done: int, total: Optional[int], elapsed: float, job=job) -> None:
                job.frames_done, job.frames_total, job.elapsed_s = done, total, elapsed
            status, error = "failed", "stopped"
            try:
                job.summary = analyze_video(str(job.folder / UPLOAD_NAME), job.folder / "out",
                                            AnalyzeOptions(every=self.every), model_dir=self.model_dir,
                                            progress=progress, should_stop=lambda: self._closed)
                status = "failed" if job.summary.get("error") else "done"
                error = job.summary.get("error")
            except Exception as exc:  # one bad video never stops the queue
                log.exception("video job %s failed", job.id)
                error = f"{type(exc).__name__}: {exc}"
            finally:
                (job.folder / UPLOAD_NAME).unlink(missing_ok=True)
                self._finish(job, status, error)

    def _finish(self, job: Job, status: str, error: Optional[str]) -> None:
        """The job's final status and the expiry of the oldest finished jobs, in one step: a client that sees
        this job finished never still sees one it pushed out."""
        with self._lock:
            job.status, job.error = status, error
            finished = [j for j in self.jobs.values() if j.status in ("done", "failed")]
            for old in finished[:max(0, len(finished) - self.kept)]:
                self.jobs.pop(old.id, None)
                shutil.rmtree(old.folder, ignore_errors=True)


def job_json(queue: JobQueue, job: Job) -> dict:
    out = {"id": job.id, "name": job.name, "status": job.status, "position": queue.position(job),
           "url": url_for("jobs.job_status", job_id=job.id)}
    if job.status in ("running", "done", "failed"):
        total = job.frames_total
        fps = job.frames_done / job.elapsed_s if job.elapsed_s > 0 else None
        out["progress"] = {"frames_done": job.frames_done, "frames_total": total,
                           "fraction": round(job.frames_done / total, 4) if total else None,
                           "frames_per_s": round(fps, 2) if fps else None,
                           "eta_s": round((total - job.frames_done) / fps, 1) if fps and total else None}
    if job.error:
        out["error"] = job.error
    if job.status == "done" and job.summary is not None:
        files = job.summary.get("files", {})
        names = [n for n in [files.get("video"), files.get("csv"), "summary.json", *files.get("figures", [])] if n]
        out["files"] = {n: url_for("jobs.job_file", job_id=job.id, name=n) for n in names}
        out["summary"] = {k: job.summary[k] for k in ("frames_read", "frames_analysed", "faces_seen", "face_rows",
                                                       "speed", "tracks", "video") if k in job.summary}
    return out


def init_app(app) -> JobQueue:
    """The one JobQueue of this process, in app.extensions['ferlive.jobs']."""
    root = app.config.get("JOBS_DIR") or tempfile.mkdtemp(prefix="ferlive-jobs-")
    queue = JobQueue(Path(root), model_dir=app.config.get("MODEL_DIR_RESOLVED"), kept=app.config["JOBS_KEPT"],
                     every=app.config["JOBS_EVERY"],
                     max_pixels=app.extensions["ferlive.config"].max_image_pixels)
    app.extensions["ferlive.jobs"] = queue
    return queue


def _queue() -> JobQueue:
    return current_app.extensions["ferlive.jobs"]


@bp.get("/video")
def video_page():
    """Upload a video, watch the job's progress, then the annotated video and the downloads."""
    return render_template("video.html", max_video_mb=current_app.config["MAX_VIDEO_BYTES"] // (1024 * 1024))


@bp.post("/api/jobs")
def create_job():
    limit = int(current_app.config["MAX_VIDEO_BYTES"])
    request.max_content_length = limit  # videos may be larger than images (Flask >= 3.1: per request)
    if request.content_length is not None and request.content_length > limit:
        abort(413)
    try:
        if request.mimetype == "multipart/form-data":
            upload = request.files.get("video")
            if upload is None or not upload.filename:
                raise JobError("no file: send the video in the multipart field `video`")
            name = upload.filename
            job = _queue().submit(name, upload.save)
        else:
            name = request.args.get("name", "video")

            def save(path: Path) -> None:
                written = 0
                with open(path, "wb") as f:
                    while chunk := request.stream.read(CHUNK):
                        written += len(chunk)
                        if written > limit:
                            abort(413)
                        f.write(chunk)
            job = _queue().submit(name, save)
    except JobError as exc:
        return jsonify(error=str(exc), status=400), 400
    return jsonify(job_json(_queue(), job)), 202


@bp.get("/api/jobs/<job_id>")
def job_status(job_id: str):
    job = _queue().get(job_id)
    if job is None:
        abort(404, description=f"no job {job_id!r} (finished jobs are kept until {current_app.config['JOBS_KEPT']} "
                               f"newer ones have finished)")
    return jsonify(job_json(_queue(), job))


@bp.get("/api/jobs/<job_id>/files/<name>")
def job_file(job_id: str, name: str):
    job = _queue().get(job_id)
    if job is None or job.status != "done" or not FILE_NAME.match(name):
        abort(404, description=f"no file {name!r} for job {job_id!r}")
    return send_from_directory(job.folder / "out", name, as_attachment=request.args.get("download") == "1")
