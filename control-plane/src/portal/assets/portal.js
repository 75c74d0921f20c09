// Strom portal: the few things that need a script — copy buttons, the zip upload
// with its progress, the live invocation stream. Everything else is plain HTML.
"use strict";

function csrf() {
  var m = document.querySelector('meta[name="csrf-token"]');
  return m ? m.getAttribute("content") : "";
}

function say(el, text, cls) {
  el.textContent = text;
  el.className = cls || "";
}

// Copy buttons: data-copy holds the text.
document.addEventListener("click", function (ev) {
  var b = ev.target.closest ? ev.target.closest("button[data-copy]") : null;
  if (!b) return;
  ev.preventDefault();
  var text = b.getAttribute("data-copy");
  var done = function () { b.textContent = "Copied"; setTimeout(function () { b.textContent = "Copy"; }, 1500); };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, function () { window.prompt("Copy:", text); });
  } else {
    window.prompt("Copy:", text);
  }
});

// Zip upload with progress: the form posts the raw zip (the same deploy path as
// Kudu's zip deploy) and waits for the new version to serve.
document.querySelectorAll("form[data-upload]").forEach(function (form) {
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var file = form.querySelector('input[type="file"]').files[0];
    var status = form.querySelector("[data-status]");
    var bar = form.querySelector("progress");
    var nameInput = form.querySelector('input[name="app"]');
    if (!file) { say(status, "Choose a .zip file first.", "bad"); return; }
    var url = form.getAttribute("action");
    if (nameInput) {
      if (!nameInput.value) { say(status, "Enter the app's name.", "bad"); return; }
      url = "/portal/apps/" + encodeURIComponent(nameInput.value) + "/deploy";
    }
    var xhr = new XMLHttpRequest();
    xhr.open("POST", url + "?file=" + encodeURIComponent(file.name));
    xhr.setRequestHeader("Content-Type", "application/zip");
    xhr.setRequestHeader("X-CSRF-Token", csrf());
    bar.hidden = false;
    bar.value = 0;
    xhr.upload.onprogress = function (e) {
      if (e.lengthComputable) {
        bar.max = e.total; bar.value = e.loaded;
        say(status, "Uploading… " + Math.round(100 * e.loaded / e.total) + "%");
      }
    };
    xhr.upload.onload = function () { say(status, "Uploaded; deploying and waiting for the new version to serve…"); };
    xhr.onerror = function () { say(status, "The upload failed: no answer from the node.", "bad"); };
    xhr.onload = function () {
      var answer = {};
      try { answer = JSON.parse(xhr.responseText); } catch (e) { answer = { message: xhr.responseText }; }
      if (xhr.status === 200) {
        say(status, answer.message || "Deployed.", "ok");
        if (answer.location) window.location.assign(answer.location);
      } else {
        say(status, (answer.message || ("HTTP " + xhr.status)) + (answer.errors && answer.errors.length ? ": " + answer.errors.join("; ") : ""), "bad");
      }
    };
    xhr.send(file);
  });
});

// Reading a local.settings.json file into the import field.
document.querySelectorAll("input[data-read-into]").forEach(function (input) {
  input.addEventListener("change", function () {
    var target = document.getElementById(input.getAttribute("data-read-into"));
    var f = input.files[0];
    if (!f || !target) return;
    var r = new FileReader();
    r.onload = function () { target.value = r.result; };
    r.readAsText(f);
  });
});

// The live invocation stream (server-sent events): new rows on top.
(function () {
  var table = document.querySelector("table[data-stream]");
  if (!table || !window.EventSource) return;
  var body = table.querySelector("tbody");
  var state = document.getElementById("stream-state");
  var source = new EventSource(table.getAttribute("data-stream"));
  var seen = {};
  body.querySelectorAll("tr[data-id]").forEach(function (tr) { seen[tr.getAttribute("data-id")] = true; });
  source.addEventListener("open", function () { say(state, "Live: new invocations appear at the top.", "ok"); });
  source.addEventListener("error", function () { say(state, "The live stream is interrupted; reconnecting…", "warn"); });
  source.addEventListener("invocation", function (ev) {
    var i = JSON.parse(ev.data);
    if (seen[i.id]) return;
    seen[i.id] = true;
    var tr = document.createElement("tr");
    tr.setAttribute("data-id", i.id);
    var cells = [i.started, i.app, i.function, i.trigger, i.status, i.http_status || "", i.duration, "node " + i.node];
    cells.forEach(function (text, n) {
      var td = document.createElement("td");
      if (n === 0) {
        var a = document.createElement("a");
        a.href = "/portal/invocations/" + encodeURIComponent(i.id);
        a.textContent = text;
        td.appendChild(a);
      } else {
        td.textContent = text;
      }
      if (n === 4) td.className = i.status === "Succeeded" ? "ok" : "bad";
      if (n === 7) td.className = "hide-narrow";
      tr.appendChild(td);
    });
    body.insertBefore(tr, body.firstChild);
    while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
  });
})();
