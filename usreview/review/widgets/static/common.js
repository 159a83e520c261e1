// Shared helpers of the usreview review widgets (prepended to each widget's module).
// No network access: everything the widgets need is in these files.

/** Create an element: h("div", {class: "x", dataset: {a: 1}}, child, "text"). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style") Object.assign(el.style, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Bytes of a binary trait (DataView, ArrayBuffer or typed array) as a Uint8Array. */
function bytesOf(value) {
  if (!value) return new Uint8Array(0);
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) {
    return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  }
  return new Uint8Array(0);
}

/** Decode a PNG or JPEG into an ImageBitmap. */
function decodeImage(bytes, mime) {
  return createImageBitmap(new Blob([bytes], { type: mime }));
}

/** Raw 8-bit grey or RGB pixels as RGBA ImageData. */
function rawToImageData(bytes, width, height, channels) {
  const out = new ImageData(width, height);
  const rgba = out.data;
  const n = width * height;
  if (channels === 1) {
    for (let i = 0, j = 0; i < n; i++, j += 4) {
      const v = bytes[i];
      rgba[j] = v; rgba[j + 1] = v; rgba[j + 2] = v; rgba[j + 3] = 255;
    }
  } else {
    for (let i = 0, k = 0, j = 0; i < n; i++, k += 3, j += 4) {
      rgba[j] = bytes[k]; rgba[j + 1] = bytes[k + 1]; rgba[j + 2] = bytes[k + 2];
      rgba[j + 3] = 255;
    }
  }
  return out;
}

/** Image pixel (x = column, y = row; pixel centres at integers) under a pointer event. */
function eventToPixel(canvas, event, originX = 0, originY = 0, marginLeft = 0, marginTop = 0) {
  const rect = canvas.getBoundingClientRect();
  const sx = canvas.width / rect.width;
  const sy = canvas.height / rect.height;
  const cx = (event.clientX - rect.left) * sx - marginLeft;
  const cy = (event.clientY - rect.top) * sy - marginTop;
  return [originX + cx - 0.5, originY + cy - 0.5];
}

/** Canvas coordinates of an image pixel (inverse of eventToPixel, before CSS scaling). */
function pixelToCanvas(x, y, originX = 0, originY = 0, marginLeft = 0, marginTop = 0) {
  return [x - originX + 0.5 + marginLeft, y - originY + 0.5 + marginTop];
}

function drawMarker(ctx, x, y, colour) {
  ctx.save();
  ctx.strokeStyle = colour;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  ctx.moveTo(x - 6, y); ctx.lineTo(x + 6, y);
  ctx.moveTo(x, y - 6); ctx.lineTo(x, y + 6);
  ctx.stroke();
  ctx.restore();
}
