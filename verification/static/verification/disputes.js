/* modelcourt dispute pages: follow a run's progress, show only the chosen suspect's fields, confirm withdrawals.
 * Without this script every form still posts and every page still shows the state it was rendered with. */
(function () {
  "use strict";

  // --- live progress: poll the JSON endpoint every 2 s until the dispute settles, then reload --------
  var box = document.getElementById("dispute-progress");
  if (box && box.getAttribute("data-settled") !== "1" && window.fetch) {
    var track = box.querySelector("[role=progressbar]");
    var fill = box.querySelector(".progress-fill");
    var phase = box.querySelector("[data-phase]");
    var percent = box.querySelector("[data-percent]");
    var badge = document.getElementById("dispute-state");
    var runsNote = document.querySelector("[data-runs-empty]");
    var timer = null;

    var show = function (data) {
      var value = Math.max(0, Math.min(100, Number(data.progress) || 0));
      box.setAttribute("data-state", data.state);
      track.setAttribute("aria-valuenow", String(value));
      fill.style.width = value + "%";
      percent.textContent = value + "%";
      phase.textContent = data.phase || data.state_label;
      if (badge) badge.textContent = data.state_label;
      if (runsNote && data.state === "running") {
        runsNote.textContent = "A run is in progress: its record appears here when it ends.";
      }
    };

    var poll = function () {
      fetch(box.getAttribute("data-url"), { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (response.status === 403 || response.status === 404) {
            window.clearInterval(timer);  // signed out, or no longer ours: stop asking
            return null;
          }
          return response.ok ? response.json() : null;
        })
        .then(function (data) {
          if (!data) return;
          show(data);
          if (data.settled) {
            window.clearInterval(timer);
            box.setAttribute("data-settled", "1");
            window.setTimeout(function () { window.location.reload(); }, 400);
          }
        })
        .catch(function () { /* a network blip: the next tick tries again */ });
    };
    timer = window.setInterval(poll, 2000);
  }

  // --- the filing form: one suspect source at a time -------------------------------------------------
  var form = document.getElementById("dispute-form");
  if (form) {
    var panels = form.querySelectorAll("[data-suspect-source]");
    var radios = form.querySelectorAll("input[name=suspect_source]");
    var sync = function () {
      var chosen = form.querySelector("input[name=suspect_source]:checked");
      var value = chosen ? chosen.value : "upload";
      panels.forEach(function (panel) {
        panel.hidden = panel.getAttribute("data-suspect-source") !== value;
      });
    };
    radios.forEach(function (radio) { radio.addEventListener("change", sync); });
    sync();

    form.addEventListener("submit", function () {
      var button = form.querySelector("button[type=submit]");
      // after this handler, so that the browser still sends the form
      window.setTimeout(function () {
        button.disabled = true;
        button.textContent = button.getAttribute("data-busy-label") || button.textContent;
      }, 0);
    });
  }

  // --- confirmations: <form data-confirm="question"> ---------------------------------------------------
  document.querySelectorAll("form[data-confirm]").forEach(function (element) {
    element.addEventListener("submit", function (event) {
      if (!window.confirm(element.getAttribute("data-confirm"))) event.preventDefault();
    });
  });
})();
