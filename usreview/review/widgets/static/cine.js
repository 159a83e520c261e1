// CineViewer: all frames arrive once as one binary buffer; playback runs in the browser with
// requestAnimationFrame at the acquisition frame rate (times from the DICOM header) x speed.
// DOM hooks: .usr-cine[data-ready, data-frame, data-fps, data-playing, data-frames,
// data-decode-ms, data-speed]; .usr-play, .usr-prev, .usr-next, .usr-speed, .usr-slider,
// .usr-frame-label.

const SPEEDS = [0.25, 0.5, 1, 2, 4];

async function decodeFrames(model) {
  const blob = bytesOf(model.get("_frames"));
  const offsets = model.get("_offsets");
  const encoding = model.get("encoding");
  const width = model.get("width");
  const height = model.get("height");
  const channels = model.get("channels");
  const frames = [];
  for (let k = 0; k + 1 < offsets.length; k++) {
    frames.push(blob.subarray(offsets[k], offsets[k + 1]));
  }
  if (encoding === "raw") {
    return frames.map((bytes) => ({ raw: bytes, width, height, channels }));
  }
  const mime = encoding === "png" ? "image/png" : "image/jpeg";
  return Promise.all(frames.map((bytes) => decodeImage(bytes, mime)));
}

function frameAt(times, t) {
  let lo = 0;
  let hi = times.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (times[mid] <= t) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

function formatSpeed(s) {
  return `${s}x`;
}

async function render({ model, el }) {
  const root = h("div", { class: "usr-cine", dataset: { ready: "false", frame: "0", fps: "0" } });
  const canvas = h("canvas", { class: "usr-canvas" });
  const label = h("span", { class: "usr-frame-label" }, "loading frames…");
  const play = h("button", { class: "usr-play", type: "button", title: "Play / pause" }, "▶");
  const prev = h("button", { class: "usr-prev", type: "button", title: "Previous frame" }, "⏮");
  const next = h("button", { class: "usr-next", type: "button", title: "Next frame" }, "⏭");
  const speed = h("select", { class: "usr-speed", title: "Playback speed" });
  for (const s of SPEEDS) speed.append(h("option", { value: String(s) }, formatSpeed(s)));
  const slider = h("input", { class: "usr-slider", type: "range", min: "0", step: "1", value: "0" });
  const controls = h("div", { class: "usr-controls" }, prev, play, next, speed, slider, label);
  root.append(canvas, controls);
  el.append(root);

  const width = model.get("width");
  const height = model.get("height");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { alpha: false });

  const started = performance.now();
  let frames = [];
  try {
    frames = await decodeFrames(model);
  } catch (error) {
    label.textContent = `cannot decode the frames: ${error}`;
    root.dataset.error = String(error);
    return;
  }
  const n = frames.length;
  const times = model.get("frame_times_ms");
  const frameTime = model.get("frame_time_ms");
  const duration = times[n - 1] + frameTime;
  root.dataset.decodeMs = (performance.now() - started).toFixed(1);
  root.dataset.frames = String(n);
  slider.max = String(Math.max(n - 1, 0));

  let scratch = null;
  function draw(k) {
    const frame = frames[k];
    if (frame.raw) {
      scratch = rawToImageData(frame.raw, frame.width, frame.height, frame.channels);
      ctx.putImageData(scratch, 0, 0);
    } else {
      ctx.drawImage(frame, 0, 0);
    }
  }

  let index = Math.min(Math.max(model.get("frame"), 0), n - 1);
  let position = times[index];
  let playing = false;
  let last = null;
  let drawn = 0;
  let windowStart = performance.now();
  let alive = true;

  function show(k) {
    index = k;
    draw(k);
    drawn += 1;
    root.dataset.frame = String(k);
    slider.value = String(k);
    label.textContent = `frame ${k + 1}/${n} · ${(times[k] / 1000).toFixed(3)} s`;
  }

  function syncFrame() {
    if (model.get("frame") !== index) {
      model.set("frame", index);
      model.save_changes();
    }
  }

  function setPlaying(value, fromModel = false) {
    playing = value;
    last = null;
    root.dataset.playing = String(playing);
    play.textContent = playing ? "⏸" : "▶";
    if (!playing) syncFrame();
    if (!fromModel && model.get("playing") !== playing) {
      model.set("playing", playing);
      model.save_changes();
    }
  }

  function seek(k) {
    const target = ((k % n) + n) % n;
    position = times[target];
    show(target);
  }

  function step(delta) {
    if (playing) setPlaying(false);
    seek(index + delta);
    syncFrame();
  }

  function tick(now) {
    if (!alive) return;
    if (playing) {
      if (last !== null) {
        position += (now - last) * model.get("speed");
        if (position >= duration) position = model.get("loop") ? position % duration : duration;
      }
      last = now;
      const k = frameAt(times, position);
      if (k !== index) show(k);
      if (!model.get("loop") && position >= duration) setPlaying(false);
    }
    const elapsed = now - windowStart;
    if (elapsed >= 1000) {
      root.dataset.fps = ((drawn * 1000) / elapsed).toFixed(2);
      drawn = 0;
      windowStart = now;
    }
    requestAnimationFrame(tick);
  }

  play.addEventListener("click", () => setPlaying(!playing));
  prev.addEventListener("click", () => step(-1));
  next.addEventListener("click", () => step(1));
  slider.addEventListener("input", () => {
    if (playing) setPlaying(false);
    seek(Number(slider.value));
    syncFrame();
  });
  speed.value = String(model.get("speed"));
  root.dataset.speed = String(model.get("speed"));
  speed.addEventListener("change", () => {
    model.set("speed", Number(speed.value));
    model.save_changes();
  });
  model.on("change:speed", () => {
    speed.value = String(model.get("speed"));
    root.dataset.speed = String(model.get("speed"));
  });
  model.on("change:playing", () => {
    if (model.get("playing") !== playing) setPlaying(model.get("playing"), true);
  });
  model.on("change:frame", () => {
    const k = model.get("frame");
    if (k !== index && !playing) seek(k);
  });

  show(index);
  drawn = 0;
  root.dataset.ready = "true";
  setPlaying(model.get("playing"), true);
  requestAnimationFrame(tick);
  return () => {
    alive = false;
  };
}

export default { render };
