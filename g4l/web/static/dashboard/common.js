/* Shared by the station pages: fetch the JSON twins, format values, write text.
   Everything is written with textContent: a prompt or an error message is never HTML. */
var g4l = (function () {
  "use strict";

  function $(id) { return document.getElementById(id); }

  /* GET a JSON twin of the page; the operator's cookie goes along. A 401/403 reloads the
     page, which then shows the key form. */
  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", cache: "no-store" }).then(function (resp) {
      if (resp.status === 401 || resp.status === 403) {
        window.location.reload();
        throw new Error("the operator's key is needed");
      }
      return resp.json().then(function (body) {
        if (!resp.ok) throw new Error((body && body.error && body.error.message) || ("HTTP " + resp.status));
        return body;
      });
    });
  }

  function present(value) { return value !== undefined && value !== null && value !== ""; }

  /* Set an element's text; "-" for a value the server did not send. */
  function text(id, value, raw) {
    var el = typeof id === "string" ? $(id) : id;
    if (!el) return;
    el.textContent = present(value) ? String(value) : "-";
    if (raw !== undefined) el.setAttribute("data-value", present(raw) ? String(raw) : "");
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function duration(seconds) {
    if (!present(seconds) || !isFinite(seconds)) return null;
    var s = Math.max(0, Number(seconds));
    if (s < 120) return s.toFixed(1) + " s";
    if (s < 7200) return Math.floor(s / 60) + " min " + pad(Math.floor(s % 60)) + " s";
    return Math.floor(s / 3600) + " h " + pad(Math.floor((s % 3600) / 60)) + " min";
  }

  function bytes(n) {
    if (!present(n)) return null;
    var units = ["B", "KB", "MB", "GB"];
    var v = Number(n), i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return (i ? v.toFixed(1) : String(v)) + " " + units[i];
  }

  function when(epoch) {
    if (!present(epoch) || !epoch) return null;
    var d = new Date(epoch * 1000);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function clock(epoch) {
    var d = new Date(epoch * 1000);
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  /* The station's health: the five-state buffer_state when the server has it, else
     buffer_health. */
  function state(st) {
    return present(st.buffer_state) ? String(st.buffer_state) : (present(st.buffer_health) ? String(st.buffer_health) : null);
  }

  function setState(el, value) {
    text(el, value, value);
    el.className = el.className.replace(/\bstate-\S+/g, "").trim();
    if (value) el.classList.add("state-" + String(value).toLowerCase().replace(/[^a-z]/g, ""));
  }

  /* The station id from the page's own path: /stations/<id>/... */
  function stationId() {
    var parts = window.location.pathname.split("/");
    return decodeURIComponent(parts[2] || "");
  }

  function cell(row, value, cls) {
    var td = document.createElement("td");
    td.textContent = present(value) ? String(value) : "-";
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function link(href, label) {
    var a = document.createElement("a");
    a.href = href;
    a.textContent = label;
    return a;
  }

  /* Poll fn every ms, one request at a time; the page says when it last worked. */
  function every(ms, fn) {
    function run() {
      fn().then(function () {
        text("updated", new Date().toLocaleTimeString());
        $("problem").textContent = "";
      }, function (err) {
        $("problem").textContent = "(" + err.message + ")";
      }).then(function () { window.setTimeout(run, ms); });
    }
    run();
  }

  return { $: $, getJSON: getJSON, present: present, text: text, duration: duration, bytes: bytes, when: when,
           clock: clock, state: state, setState: setState, stationId: stationId, cell: cell, link: link,
           every: every };
})();
