// The catalogue's pages work without this; it adds delete confirmation, location-mode toggling
// and copy-on-click for command hints. No token ever reaches scripts (it is an HttpOnly cookie).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
  const modes = document.querySelectorAll("input[name=location_mode]");
  const showMode = () => {
    const chosen = document.querySelector("input[name=location_mode]:checked");
    document.querySelectorAll(".mode").forEach((el) => {
      el.hidden = !chosen || !el.classList.contains("mode-" + chosen.value);
    });
  };
  modes.forEach((el) => el.addEventListener("change", showMode));
  if (modes.length) showMode();
  document.querySelectorAll("code.copy").forEach((el) => {
    el.title = "click to copy";
    el.addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(el.textContent));
  });
});
