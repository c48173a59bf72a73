// The heatmap's site control (pure, unit-tested): what it offers and which choice is shown.

/**
 * The site select's options [{value, text}] ("all sites" first) and its current value, from the
 * kernel's `site_options` and the panels shown. Fewer than two sites: no options (no control).
 */
export function siteChoices(options, panels) {
  if (!options || options.length < 2) return { choices: [], current: "" };
  const choices = [{ value: "all", text: "all sites" }, ...options.map((o) => ({ value: o.site, text: o.title }))];
  const shown = (panels ?? []).map((p) => p.site);
  return { choices, current: shown.length === 1 ? shown[0] : "all" };
}
