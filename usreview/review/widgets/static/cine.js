// CineViewer: frames arrive either at once (one binary buffer, the `_frames` trait) or in
// chunks (custom messages {kind: "frames", start, offsets} with one buffer each), after a
// first frame (`_first`, PNG) drawn at once. Playback runs in the browser with
// requestAnimationFrame at the acquisition frame rate (times from the DICOM header) x speed,
// over the frames arrived so far. DOM hooks: .usr-cine[data-shown, data-first-ms, data-ready,
// data-loaded, data-frame, data-fps, data-playing, data-frames, data-decode-ms, data-speed];
// .usr-play, .usr-prev, .usr-next, .usr-speed, .usr-slider, .usr-frame-label.

const SPEEDS = [0.25, 0.5, 1, 2, 4];

function decodeChunk(blob, offsets, encoding, width, height, channels) {
  const frames = [];
  for (let k = 0; k + 1 < offsets.length; k++) {
    frames.push(blob.subarray(offsets[k], offsets[k + 1]));
  }
  if (encoding === "raw") {
    return Promise.resolve(frames.map((bytes) => ({ raw: bytes, width, height, channels })));
  }
  const mime = encoding === "png" ? "image/png" : "image/jpeg";
  return Promise.all(frames.map((bytes) => decodeImage(bytes, mime)));
}

function frameAt(times, t, count = times.length) {
  let lo = 0;
  let hi = count - 1;
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
  const root = h("div", { class: "usr-cine", dataset: { ready: "false", shown: "false", frame: "0", fps: "0", loaded: "0" } });
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

  const started = performance.now();
  const ctx = canvas.getContext("2d", { alpha: false });
  function size() {
    if (canvas.width !== model.get("width")) canvas.width = model.get("width");
    if (canvas.height !== model.get("height")) canvas.height = model.get("height");
  }
  size();

  // The frames so far: frames[k] once decoded; `available` frames from 0 have arrived.
  let frames = [];
  let available = 0;
  let n = 0;
  let times = [];
  let frameTime = 0;
  let duration = 0;
  let first = null;
  let alive = true;

  function timing() {
    n = model.get("number_of_frames");
    times = model.get("frame_times_ms");
    frameTime = model.get("frame_time_ms");
    duration = n ? times[n - 1] + frameTime : 0;
    root.dataset.frames = String(n);
    slider.max = String(Math.max(n - 1, 0));
  }
  timing();

  let scratch = null;
  function draw(k) {
    const frame = frames[k] || (k === 0 ? first : null);
    if (!frame) return false;
    if (frame.raw) {
      scratch = rawToImageData(frame.raw, frame.width, frame.height, frame.channels);
      ctx.putImageData(scratch, 0, 0);
    } else {
      ctx.drawImage(frame, 0, 0);
    }
    if (root.dataset.shown !== "true") {
      root.dataset.shown = "true";
      root.dataset.firstMs = (performance.now() - started).toFixed(1);
    }
    return true;
  }

  let index = 0;
  let position = 0;
  let playing = false;
  let last = null;
  let drawn = 0;
  let windowStart = performance.now();

  function describe(k) {
    const time = n ? `${(times[k] / 1000).toFixed(3)} s` : "";
    const loading = n && available < n ? ` · ${available}/${n} loaded` : "";
    label.textContent = n ? `frame ${k + 1}/${n} · ${time}${loading}` : "loading frames…";
  }

  function show(k) {
    index = k;
    if (draw(k)) drawn += 1;
    root.dataset.frame = String(k);
    slider.value = String(k);
    describe(k);
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
    if (!n) return;
    const target = Math.min(((k % n) + n) % n, Math.max(available - 1, 0));
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
    if (playing && available > 0) {
      if (last !== null) {
        position += (now - last) * model.get("speed");
        if (available < n && position >= times[available]) {
          position = times[available - 1]; // wait on the last frame arrived
        } else if (position >= duration) {
          position = model.get("loop") ? position % duration : duration;
        }
      }
      last = now;
      const k = frameAt(times, position, available);
      if (k !== index) show(k);
      if (!model.get("loop") && available === n && position >= duration) setPlaying(false);
    }
    const elapsed = now - windowStart;
    if (elapsed >= 1000) {
      root.dataset.fps = ((drawn * 1000) / elapsed).toFixed(2);
      drawn = 0;
      windowStart = now;
    }
    requestAnimationFrame(tick);
  }

  function arrived(start, decoded) {
    decoded.forEach((frame, i) => {
      frames[start + i] = frame;
    });
    while (available < n && frames[available]) available += 1;
    root.dataset.loaded = String(available);
    if (root.dataset.shown !== "true" && frames[0]) show(0);
    describe(index);
    if (n && available === n && root.dataset.ready !== "true") {
      root.dataset.decodeMs = (performance.now() - started).toFixed(1);
      root.dataset.ready = "true";
    }
  }

  async function receive(start, blob, offsets, encoding) {
    try {
      const decoded = await decodeChunk(
        blob, offsets, encoding, model.get("width"), model.get("height"), model.get("channels"),
      );
      if (alive) arrived(start, decoded);
    } catch (error) {
      label.textContent = `cannot decode the frames: ${error}`;
      root.dataset.error = String(error);
    }
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
  model.on("change:width", size);
  model.on("change:height", size);
  model.on("change:number_of_frames", () => {
    timing();
    describe(index);
  });
  model.on("change:frame_times_ms", timing);
  model.on("msg:custom", (msg, buffers) => {
    if (msg && msg.kind === "frames" && buffers && buffers.length) {
      receive(msg.start, bytesOf(buffers[0]), msg.offsets, msg.encoding);
    }
  });

  setPlaying(model.get("playing"), true);
  const firstBytes = bytesOf(model.get("_first"));
  if (firstBytes.length) {
    try {
      first = await decodeImage(firstBytes, "image/png");
      show(0);
    } catch (error) {
      root.dataset.error = String(error);
    }
  }
  const blob = bytesOf(model.get("_frames"));
  if (blob.length) {
    await receive(0, blob, model.get("_offsets"), model.get("encoding"));
  } else {
    model.send({ kind: "want" }); // the chunks sent before this view existed
  }
  index = Math.min(Math.max(model.get("frame"), 0), Math.max(available - 1, 0));
  position = n ? times[index] : 0;
  show(index);
  drawn = 0;
  requestAnimationFrame(tick);
  return () => {
    alive = false;
  };
}

export default { render };
