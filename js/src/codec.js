// Array codecs: numpy arrays arrive as {view|buffer|b64, dtype, shape} (C order).
// `view` is what ipywidgets hands us (a DataView over a shared buffer, often with a
// nonzero byteOffset); `b64` is what the standalone HTML export embeds.

const TYPES = {
  float32: Float32Array,
  float64: Float64Array,
  int32: Int32Array,
  uint8: Uint8Array,
};

function base64Bytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** Return a Uint8Array over the bytes of a DataView / ArrayBuffer / typed array / base64 string. */
export function asBytes(raw) {
  if (raw == null) throw new Error("array payload has no data");
  if (typeof raw === "string") return base64Bytes(raw);
  if (raw instanceof ArrayBuffer) return new Uint8Array(raw);
  if (ArrayBuffer.isView(raw)) return new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength);
  throw new Error(`cannot read array bytes from ${Object.prototype.toString.call(raw)}`);
}

/** Decode {view|buffer|b64, dtype, shape} into {data: TypedArray, shape: number[]}. */
export function decodeArray(payload) {
  if (payload == null) return null;
  const dtype = payload.dtype ?? "float32";
  const Type = TYPES[dtype];
  if (!Type) throw new Error(`unsupported dtype ${dtype}`);
  const shape = (payload.shape ?? []).map(Number);
  const bytes = asBytes(payload.view ?? payload.buffer ?? payload.b64);
  const size = shape.reduce((a, b) => a * b, 1);
  if (bytes.byteLength !== size * Type.BYTES_PER_ELEMENT) {
    throw new Error(`array of shape [${shape}] ${dtype} needs ${size * Type.BYTES_PER_ELEMENT} bytes, got ${bytes.byteLength}`);
  }
  // A typed array view needs an aligned offset; copy when the buffer is misaligned.
  const aligned = bytes.byteOffset % Type.BYTES_PER_ELEMENT === 0;
  const data = aligned
    ? new Type(bytes.buffer, bytes.byteOffset, size)
    : new Type(bytes.slice().buffer, 0, size);
  return { data, shape };
}

/** Encode a typed array + shape into the same payload form (used by tests and the HTML page). */
export function encodeArray(data, shape, dtype = "float32") {
  const Type = TYPES[dtype];
  const typed = data instanceof Type ? data : Type.from(data);
  return { view: new DataView(typed.buffer, typed.byteOffset, typed.byteLength), dtype, shape: [...shape] };
}

/** Element (i, j) of a 2-D C-order array, or (k, i, j) of a 3-D one. */
export function at(array, ...index) {
  let flat = 0;
  for (let d = 0; d < index.length; d++) flat = flat * array.shape[d] + index[d];
  return array.data[flat];
}
