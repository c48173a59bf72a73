import { describe, expect, it } from "vitest";
import { siteChoices } from "../src/controls.js";

const options = [
  { site: "hidden", title: "hidden state" },
  { site: "mlp", title: "MLP" },
  { site: "attn", title: "attention" },
];

describe("site control", () => {
  it("offers all sites and each one, showing the single panel's site", () => {
    const { choices, current } = siteChoices(options, [options[1]]);
    expect(choices.map((c) => c.value)).toEqual(["all", "hidden", "mlp", "attn"]);
    expect(choices.map((c) => c.text)).toEqual(["all sites", "hidden state", "MLP", "attention"]);
    expect(current).toBe("mlp");
    expect(siteChoices(options, options).current).toBe("all");
  });

  it("is absent with fewer than two sites to switch between (or in a state saved before it)", () => {
    expect(siteChoices([options[0]], [options[0]])).toEqual({ choices: [], current: "" });
    expect(siteChoices(undefined, [options[0]]).choices).toEqual([]);
  });
});
