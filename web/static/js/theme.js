// Runs in <head>, before the first paint: the theme stored by the toggle (localStorage
// "cx-theme": "dark" | "light"), else the system's (prefers-color-scheme, in the CSS).
(function () {
  try {
    var t = localStorage.getItem("cx-theme");
    if (t === "dark" || t === "light") document.documentElement.setAttribute("data-theme", t);
  } catch (e) { /* storage disabled: the system theme applies */ }
})();
