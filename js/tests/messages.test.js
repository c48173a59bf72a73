import { describe, expect, it } from "vitest";
import { fmt, sizeText } from "../src/format.js";
import { axisKey, clickedText, figureLines, heatmapHint, overlayHint, traceTitle, unreadable, uploadTooLarge } from "../src/messages.js";

describe("wording", () => {
  it("names an oversized upload and the limit in units people read", () => {
    expect(uploadTooLarge("flag.png", 9.5 * 2 ** 20, 8 * 2 ** 20)).toBe("“flag.png” is 9.5 MB; the limit is 8 MB. Pick a smaller image.");
    expect(sizeText(300)).toBe("300 bytes");
    expect(sizeText(12 * 1024)).toBe("12 KB");
  });

  it("promises a re-run only where a kernel will answer", () => {
    expect(heatmapHint(true)).toContain("re-run");
    expect(heatmapHint(false)).not.toMatch(/re-run|running/);
    expect(overlayHint(false)).toContain("only select");
    expect(clickedText("layer 3", true)).toBe("layer 3 · running…");
    expect(clickedText("layer 3", false)).toBe("layer 3");
  });

  it("reads like a sentence, not like Python", () => {
    for (const text of [uploadTooLarge("a.png", 2e7, 1e7), heatmapHint(false), overlayHint(true), unreadable("heatmap")]) {
      expect(text).toMatch(/^[A-Z“]/);
      expect(text).not.toMatch(/Error:|object at 0x|got '/);
    }
  });

  it("formats numbers", () => {
    expect(fmt(0.12345)).toBe("0.123");
    expect(fmt(Number.NaN)).toBe("–");
    expect(fmt(12345)).toBe("1.23e+4");
  });
});

describe("what a trace figure names", () => {
  it("titles the heatmap with the question, target, corruption and anchors", () => {
    const title = traceTitle({ question: "What is the capital of this country?", target: "Brasilia", corruption: "noise on 'this country'", clean: 0.93, corrupted: 0.1 });
    expect(title).toBe("“What is the capital of this country?” → \"Brasilia\" · corrupted by noise on 'this country' · clean p 0.930 · corrupted p 0.100");
    expect(traceTitle({ target: "x", clean: 0.9, corrupted: 0.1 })).toBe('target "x" · clean p 0.900 · corrupted p 0.100');
  });

  it("keys the token axis's marks", () => {
    const spans = [
      { start: 3, end: 4, kind: "textual", text: "capital", corrupted: false },
      { start: 6, end: 8, kind: "visual", text: "this country", corrupted: true },
      { start: 1, end: 2, kind: "image", text: "image", corrupted: false },
    ];
    expect(axisKey(spans, "noise on 'this country'")).toEqual([
      { kind: "corrupted", text: "* corrupted (noise on 'this country')" },
      { kind: "visual", text: "visual constraint “this country”" },
      { kind: "textual", text: "textual constraint “capital”" },
    ]);
    expect(axisKey([], "")).toEqual([]);
  });

  it("puts the chosen score's definition and the legend's note above a downloaded PNG", () => {
    const base = { title: "“Where?” → \"Paris\"", key: "* corrupted", definition: "normalised = …", note: "no normalised effect is shown" };
    expect(figureLines({ ...base, value: "normalized" })).toEqual([base.title, base.key, base.definition, base.note]);
    expect(figureLines({ ...base, value: "score", note: "" })).toEqual([base.title, base.key]);
    expect(figureLines({ title: "t", value: "indirect_effect", definition: "indirect effect = …" })).toEqual(["t", "indirect effect = …"]);
  });
});
