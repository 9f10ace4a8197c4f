// Typeset the math that pymdownx.arithmatex (generic mode) leaves in .arithmatex elements:
// inline as \( ... \), display as \[ ... \]. KaTeX and its fonts are served from this site
// (docs/javascripts/katex), so nothing is fetched from a CDN. `document$` is Material's
// observable of page loads, so this also runs after instant navigation.
document$.subscribe(({ body }) => {
  for (const el of body.querySelectorAll(".arithmatex")) {
    renderMathInElement(el, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
    });
  }
});
