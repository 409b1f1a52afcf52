/* modelcourt owner pages: copy buttons, the registration form's upload with progress, and a model page that
 * follows its sandbox validation. Without this script every form still posts to its Django view. */
(function () {
  "use strict";

  // --- copy buttons: <button data-copy="#element-id"> ---------------------------------------
  document.querySelectorAll("[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var target = document.querySelector(button.getAttribute("data-copy"));
      if (!target) return;
      var text = target.textContent.trim();
      var done = function () {
        var label = button.textContent;
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = label; }, 1500);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { selectText(target); });
      } else {
        selectText(target);
      }
    });
  });

  function selectText(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  // --- validation: poll the model's API view every 2 s while it is validating, then reload -----
  var validation = document.getElementById("model-validation");
  if (validation && window.fetch) {
    var timer = window.setInterval(function () {
      fetch(validation.getAttribute("data-url"), { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (response.status === 401 || response.status === 403 || response.status === 404) {
            window.clearInterval(timer);  // signed out, or deleted: stop asking
            return null;
          }
          return response.ok ? response.json() : null;
        })
        .then(function (data) {
          if (data && data.state && data.state !== "validating") {
            window.clearInterval(timer);
            validation.setAttribute("data-state", data.state);
            window.setTimeout(function () { window.location.reload(); }, 300);
          }
        })
        .catch(function () { /* a network blip: the next tick tries again */ });
    }, 2000);
  }

  // --- registration: multipart POST to the API with upload progress -------------------------
  var form = document.getElementById("register-form");
  if (!form || !window.FormData || !window.XMLHttpRequest) return;

  // Registry error codes that are about one field (the API's "fields" covers serializer errors).
  var FIELD_FOR_CODE = {
    name: "name", duplicate_name: "name", input_shape: "input_shape", num_classes: "num_classes",
    artifact: "artifact", artifact_rejected: "artifact", too_large: "artifact"
  };
  var progress = document.getElementById("upload-progress");
  var track = progress.querySelector("[role=progressbar]");
  var fill = progress.querySelector(".progress-fill");
  var stateText = progress.querySelector("[data-progress-text]");
  var percentText = progress.querySelector("[data-progress-percent]");
  var formError = document.getElementById("form-error");
  var submit = form.querySelector("button[type=submit]");

  function cookie(name) {
    var match = document.cookie.match(new RegExp("(?:^|;\\s*)" + name + "=([^;]*)"));
    return match ? decodeURIComponent(match[1]) : null;
  }

  function clearErrors() {
    form.querySelectorAll("[data-error-for]").forEach(function (element) {
      element.textContent = "";
      element.hidden = true;
      element.parentNode.classList.remove("has-error");
    });
    form.querySelectorAll("[aria-invalid]").forEach(function (input) { input.removeAttribute("aria-invalid"); });
    formError.textContent = "";
    formError.hidden = true;
  }

  function fieldError(name, text) {
    var slot = form.querySelector('[data-error-for="' + name + '"]');
    if (!slot) return false;
    slot.textContent = text;
    slot.hidden = false;
    slot.parentNode.classList.add("has-error");
    var input = form.elements[name];
    if (input && input.setAttribute) input.setAttribute("aria-invalid", "true");
    return true;
  }

  function formLevelError(text) {
    formError.textContent = text;
    formError.hidden = false;
  }

  function sentence(text) {
    text = String(text || "").trim();
    text = text.charAt(0).toUpperCase() + text.slice(1);
    return /[.!?]$/.test(text) ? text : text + ".";
  }

  function setProgress(state, percent, text) {
    progress.hidden = false;
    progress.setAttribute("data-state", state);
    if (percent !== null) {
      track.setAttribute("aria-valuenow", String(percent));
      fill.style.width = percent + "%";
      percentText.textContent = percent + "%";
    }
    stateText.textContent = text;
  }

  function busy(flag) {
    submit.disabled = flag;
    submit.textContent = flag ? "Working…" : "Upload and register";
  }

  function showApiErrors(status, body) {
    if (!body || typeof body !== "object") {
      if (status === 413) {
        fieldError("artifact", "The file is larger than the server accepts (" + form.dataset.maxLabel + " at most).");
      } else {
        formLevelError("The server answered " + status + ". Try again in a moment.");
      }
      return;
    }
    var shown = false;
    if (body.fields && typeof body.fields === "object") {
      Object.keys(body.fields).forEach(function (name) {
        var messages = [].concat(body.fields[name]).map(sentence).join(" ");
        shown = fieldError(name, messages) || shown;
      });
    }
    if (!shown && FIELD_FOR_CODE[body.code]) {
      shown = fieldError(FIELD_FOR_CODE[body.code], sentence(body.detail));
    }
    if (!shown) formLevelError(sentence(body.detail || "The registration failed"));
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    clearErrors();
    var file = form.elements.artifact.files[0];
    var limit = Number(form.dataset.maxBytes);
    if (file && limit && file.size > limit) {
      fieldError("artifact", "This file is too large: the limit is " + form.dataset.maxLabel + ".");
      return;
    }

    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.dataset.apiUrl);
    var token = cookie("csrftoken") || form.elements.csrfmiddlewaretoken.value;
    xhr.setRequestHeader("X-CSRFToken", token);
    xhr.setRequestHeader("Accept", "application/json");

    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) return;
      var percent = Math.min(100, Math.floor((e.loaded * 100) / e.total));
      setProgress("uploading", percent, "Uploading…");
    });
    xhr.upload.addEventListener("load", function () {
      setProgress("validating", 100, "Storing and digesting the model…");
    });
    xhr.addEventListener("load", function () {
      var body = null;
      try { body = JSON.parse(xhr.responseText); } catch (ignored) { body = null; }
      // 202: stored and queued for the sandbox check, which the model's page follows
      if ((xhr.status === 202 || xhr.status === 201) && body && body.id) {
        setProgress("done", 100, "Uploaded. Opening the model…");
        var zero = "00000000-0000-0000-0000-000000000000";
        window.location.assign(form.dataset.detailUrl.replace(zero, body.id) + "?registered=1");
        return;
      }
      progress.hidden = true;
      progress.setAttribute("data-state", "failed");
      busy(false);
      showApiErrors(xhr.status, body);
    });
    xhr.addEventListener("error", function () {
      progress.hidden = true;
      progress.setAttribute("data-state", "failed");
      busy(false);
      formLevelError("The upload was interrupted (network error). Check your connection and try again.");
    });

    busy(true);
    setProgress("uploading", 0, "Uploading…");
    xhr.send(new FormData(form));
  });
})();
