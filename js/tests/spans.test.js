import { describe, expect, it } from "vitest";
import { addRange, clearRange, markRange, spanAt, spanText, toggleToken } from "../src/spans.js";

const V = "visual";
const T = "textual";

describe("toggleToken", () => {
  it("marks a lone token as a one-token span", () => {
    expect(toggleToken([], 3, V)).toEqual([{ start: 3, end: 4, kind: V }]);
  });

  it("extends a span of the same kind it touches, on either side", () => {
    const after = toggleToken([{ start: 2, end: 4, kind: V }], 4, V);
    expect(after).toEqual([{ start: 2, end: 5, kind: V }]);
    const before = toggleToken(after, 1, V);
    expect(before).toEqual([{ start: 1, end: 5, kind: V }]);
  });

  it("bridges two spans of its kind into one", () => {
    const spans = [
      { start: 0, end: 2, kind: V },
      { start: 3, end: 5, kind: V },
    ];
    expect(toggleToken(spans, 2, V)).toEqual([{ start: 0, end: 5, kind: V }]);
  });

  it("does not join a span of the other kind", () => {
    expect(toggleToken([{ start: 0, end: 2, kind: V }], 2, T)).toEqual([
      { start: 0, end: 2, kind: V },
      { start: 2, end: 3, kind: T },
    ]);
  });

  it("unmarks a token marked in the current mode, splitting its span", () => {
    expect(toggleToken([{ start: 1, end: 4, kind: V }], 2, V)).toEqual([
      { start: 1, end: 2, kind: V },
      { start: 3, end: 4, kind: V },
    ]);
    expect(toggleToken([{ start: 1, end: 2, kind: V }], 1, V)).toEqual([]);
  });

  it("switches a token marked in the other mode", () => {
    expect(toggleToken([{ start: 1, end: 4, kind: V }], 3, T)).toEqual([
      { start: 1, end: 3, kind: V },
      { start: 3, end: 4, kind: T },
    ]);
  });

  it("keeps adjacent spans of the same kind apart unless a click bridges them", () => {
    const spans = [
      { start: 0, end: 1, kind: T },
      { start: 1, end: 2, kind: T },
    ];
    expect(toggleToken(spans, 4, V)).toEqual([...spans, { start: 4, end: 5, kind: V }]);
  });

  it("never mutates its input", () => {
    const spans = [{ start: 1, end: 3, kind: V }];
    const copy = structuredClone(spans);
    toggleToken(spans, 2, V);
    toggleToken(spans, 3, V);
    expect(spans).toEqual(copy);
  });
});

describe("ranges", () => {
  it("marks a range in either direction, replacing what it covers", () => {
    const spans = [
      { start: 0, end: 2, kind: T },
      { start: 5, end: 6, kind: V },
    ];
    expect(markRange(spans, 4, 1, V)).toEqual([
      { start: 0, end: 1, kind: T },
      { start: 1, end: 6, kind: V },
    ]);
  });

  it("clears a range out of the spans it cuts", () => {
    expect(clearRange([{ start: 0, end: 6, kind: V }], 2, 3)).toEqual([
      { start: 0, end: 2, kind: V },
      { start: 4, end: 6, kind: V },
    ]);
  });

  it("adds a range merged with touching spans of its kind", () => {
    expect(addRange([{ start: 0, end: 2, kind: T }], 2, 3, T)).toEqual([{ start: 0, end: 4, kind: T }]);
  });
});

describe("lookups", () => {
  const question = "What is the capital of this country?";
  const tokens = [
    [0, 4],
    [5, 7],
    [8, 11],
    [12, 19],
    [20, 22],
    [23, 27],
    [28, 35],
    [35, 36],
  ].map(([start, end]) => ({ start, end, text: question.slice(start, end) }));

  it("finds the span of a token", () => {
    const spans = [{ start: 5, end: 7, kind: V }];
    expect(spanAt(spans, 6)).toEqual(spans[0]);
    expect(spanAt(spans, 7)).toBeUndefined();
  });

  it("reads a span's phrase from the question, spaces included", () => {
    expect(spanText(question, tokens, { start: 5, end: 7, kind: V })).toBe("this country");
    expect(spanText(question, tokens, { start: 6, end: 8, kind: V })).toBe("country?");
  });
});
