import { describe, expect, it } from "vitest";
import { asBytes, at, decodeArray, encodeArray } from "../src/codec.js";

describe("decodeArray", () => {
  it("round-trips a float32 array through encodeArray", () => {
    const out = decodeArray(encodeArray([1, 2, 3, 4, 5, 6], [2, 3]));
    expect(Array.from(out.data)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(out.shape).toEqual([2, 3]);
    expect(at(out, 1, 2)).toBe(6);
  });

  it("honours the byteOffset of a DataView into a larger buffer", () => {
    const buffer = new ArrayBuffer(64);
    new Float32Array(buffer, 16, 3).set([7, 8, 9]);
    const out = decodeArray({ view: new DataView(buffer, 16, 12), dtype: "float32", shape: [3] });
    expect(Array.from(out.data)).toEqual([7, 8, 9]);
  });

  it("copies a misaligned view instead of failing", () => {
    const bytes = new Uint8Array(13);
    bytes.set(new Uint8Array(new Float32Array([1.5, -2.5, 3.25]).buffer), 1);
    const out = decodeArray({ view: new DataView(bytes.buffer, 1, 12), dtype: "float32", shape: [3] });
    expect(Array.from(out.data)).toEqual([1.5, -2.5, 3.25]);
  });

  it("decodes base64 payloads (the static HTML export) and keeps NaN", () => {
    const raw = new Uint8Array(new Float32Array([0.25, Number.NaN]).buffer);
    const b64 = btoa(String.fromCharCode(...raw));
    const out = decodeArray({ b64, dtype: "float32", shape: [1, 2] });
    expect(out.data[0]).toBe(0.25);
    expect(Number.isNaN(out.data[1])).toBe(true);
  });

  it("rejects a payload whose size does not match its shape", () => {
    expect(() => decodeArray({ view: new DataView(new ArrayBuffer(8)), dtype: "float32", shape: [3] })).toThrow(/needs 12 bytes/);
    expect(() => decodeArray({ view: new DataView(new ArrayBuffer(8)), dtype: "complex64", shape: [1] })).toThrow(/dtype/);
  });

  it("returns null for a missing array and reads typed arrays as bytes", () => {
    expect(decodeArray(null)).toBeNull();
    expect(asBytes(new Float32Array([1])).byteLength).toBe(4);
  });
});
