/* /stations/<id>/dashboard: the station's status every 3 s, its buffer plot drawn here in
   SVG (a few dozen lines do; no charting library to ship offline). */
(function () {
  "use strict";
  var id = g4l.stationId();
  var base = "/stations/" + encodeURIComponent(id);
  var SVG = "http://www.w3.org/2000/svg";
  var W = 800, H = 260, LEFT = 60, RIGHT = 12, TOP = 12, BOTTOM = 28;
  var STATES = ["healthy", "warning", "critical", "emergency"];  // buffer_thresholds_s keys, high to low
  var samples = [];  // {t, buffered_s, state}, oldest first
  var windowS = 86400;
  var last = null;   // the last status

  g4l.$("recordings-link").href = base + "/recordings";

  function el(name, attrs, parent, content) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (content !== undefined) node.textContent = content;
    parent.appendChild(node);
    return node;
  }

  /* The plot: seconds buffered (y) over wall time (x), with the health thresholds as bands
     and dashed lines (buffer_thresholds_s), or the target buffer when there are none. */
  function draw() {
    var svg = g4l.$("plot");
    svg.replaceChildren();
    var st = last || {};
    var th = st.buffer_thresholds_s && typeof st.buffer_thresholds_s === "object" ? st.buffer_thresholds_s : null;
    // The y range: the samples, and the next bound above them (a 24 h threshold over a
    // 45 s buffer would flatten the line); bounds higher than that are left out.
    var most = 0;
    samples.forEach(function (s) { most = Math.max(most, s.buffered_s); });
    var top = Math.max(1, most * 1.25);
    if (th) {
      var above = STATES.map(function (k) { return th[k]; }).filter(function (v) { return isFinite(v) && v > most; });
      if (above.length) top = Math.max(top, Math.min.apply(null, above) * 1.15);
    } else if (isFinite(st.target_buffer_seconds)) {
      top = Math.max(top, st.target_buffer_seconds * 1.15);
    }
    var now = Date.now() / 1000;
    var t1 = samples.length ? Math.max(samples[samples.length - 1].t, now - 1) : now;
    var t0 = samples.length ? Math.max(samples[0].t, t1 - windowS) : t1 - 60;
    if (t1 - t0 < 10) t0 = t1 - 10;
    function x(t) { return LEFT + (t - t0) / (t1 - t0) * (W - LEFT - RIGHT); }
    function y(v) { return TOP + (1 - Math.min(v, top) / top) * (H - TOP - BOTTOM); }

    if (th) {  // bands: each state from its lower bound up to the next one's
      var upper = top;
      STATES.forEach(function (k) {
        if (!isFinite(th[k]) || th[k] > top) return;
        var lo = th[k];
        el("rect", { "class": "band band-" + k, x: LEFT, y: y(upper), width: W - LEFT - RIGHT,
                     height: Math.max(0, y(lo) - y(upper)) }, svg);
        el("line", { "class": "bound bound-" + k, x1: LEFT, x2: W - RIGHT, y1: y(lo), y2: y(lo),
                     "data-state": k, "data-seconds": th[k] }, svg);
        el("text", { "class": "bound-label label-" + k, x: W - RIGHT - 4, y: y(lo) - 3, "text-anchor": "end" }, svg,
           k.toUpperCase() + " \u2265 " + g4l.duration(th[k]));
        upper = lo;
      });
      el("rect", { "class": "band band-depleted", x: LEFT, y: y(upper), width: W - LEFT - RIGHT,
                   height: Math.max(0, y(0) - y(upper)) }, svg);
    } else if (isFinite(st.target_buffer_seconds)) {
      var ty = y(st.target_buffer_seconds);
      el("line", { "class": "bound bound-target", x1: LEFT, x2: W - RIGHT, y1: ty, y2: ty }, svg);
      el("text", { "class": "tick", x: W - RIGHT - 4, y: ty - 3, "text-anchor": "end" }, svg, "target");
    }
    // axes and ticks
    el("line", { "class": "axis", x1: LEFT, x2: LEFT, y1: TOP, y2: H - BOTTOM }, svg);
    el("line", { "class": "axis", x1: LEFT, x2: W - RIGHT, y1: H - BOTTOM, y2: H - BOTTOM }, svg);
    [0, top / 2, top].forEach(function (v) {
      el("text", { "class": "tick", x: LEFT - 6, y: y(v) + 4, "text-anchor": "end" }, svg, short(v));
    });
    // time: how long ago, and the clock time of the newest sample
    [[t0, "-" + short(t1 - t0)], [(t0 + t1) / 2, "-" + short((t1 - t0) / 2)], [t1, g4l.clock(t1)]].forEach(
      function (tick, i) {
        el("text", { "class": "tick", x: x(tick[0]), y: H - 8, "text-anchor": ["start", "middle", "end"][i] }, svg,
           tick[1]);
      });
    var shown = samples.filter(function (s) { return s.t >= t0; });
    if (!shown.length) {
      el("text", { "class": "nodata", x: (LEFT + W) / 2, y: H / 2, "text-anchor": "middle" }, svg,
         "no samples yet");
    } else {
      var d = shown.map(function (s, i) {
        return (i ? "L" : "M") + x(s.t).toFixed(1) + "," + y(s.buffered_s).toFixed(1);
      }).join(" ");
      el("path", { id: "buffer-line", "class": "line", d: d, "data-points": shown.length }, svg);
      var end = shown[shown.length - 1];
      el("circle", { "class": "dot", cx: x(end.t), cy: y(end.buffered_s), r: 3.5 }, svg);
    }
    g4l.text("plot-caption", shown.length + " samples, one every " + g4l.duration(everyS) + "; the last " +
             g4l.duration(t1 - t0) + " shown (kept: " + g4l.duration(windowS) + ")");
  }
  var everyS = 10;

  /* An axis label: "45 s", "12 min", "5.5 h". */
  function short(seconds) {
    if (seconds < 120) return Math.round(seconds) + " s";
    if (seconds < 7200) return Math.round(seconds / 60) + " min";
    return (seconds / 3600).toFixed(seconds < 36000 ? 1 : 0) + " h";
  }

  function outputs(list) {
    var body = document.querySelector("#outputs tbody");
    body.replaceChildren.apply(body, (list || []).map(function (o) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-output", o.output_id);
      g4l.cell(tr, o.url, "url");  // the server URL: the stream key is never sent to this page
      var state = g4l.cell(tr, "", "state");
      g4l.setState(state, o.state);
      g4l.cell(tr, o.state === "connected" ? g4l.duration(o.uptime_s) : null, "num");
      g4l.cell(tr, o.bitrate_kbps ? Math.round(o.bitrate_kbps) + " kb/s" : null, "num");
      g4l.cell(tr, o.reconnects, "num");
      g4l.cell(tr, o.last_error ? o.last_error + " (" + g4l.when(o.last_error_at) + ")" : null);
      return tr;
    }));
    g4l.$("no-outputs").hidden = !!(list && list.length);
  }

  function errors(list) {
    var ol = g4l.$("errors");
    var recent = (list || []).slice().reverse();  // newest first
    ol.replaceChildren.apply(ol, recent.map(function (e) {
      var li = document.createElement("li");
      var at = document.createElement("span");
      at.className = "when";
      at.textContent = g4l.when(e.at) || "";
      var code = document.createElement("span");
      code.className = "code";
      code.textContent = e.code || "";
      var msg = document.createElement("span");
      msg.className = "message";
      msg.textContent = e.message || "";
      li.append(at, code, msg);
      return li;
    }));
    g4l.$("no-errors").hidden = recent.length > 0;
  }

  function show(st) {
    last = st;
    g4l.text("name", st.name || st.station_id);
    document.title = "g4l: " + (st.name || st.station_id);
    g4l.text("status", st.status + (st.stopped_reason ? " (" + st.stopped_reason + ")" : ""), st.status);
    g4l.setState(g4l.$("state"), g4l.state(st));
    g4l.text("buffered", g4l.duration(st.buffered_seconds), st.buffered_seconds);
    g4l.text("target", g4l.duration(st.target_buffer_seconds), st.target_buffer_seconds);
    var rtf = st.realtime_factor;
    g4l.text("rtf", g4l.present(rtf) && isFinite(rtf) ? Number(rtf).toFixed(2) + "\u00d7" : null, rtf);
    g4l.text("listeners", st.listeners, st.listeners);
    g4l.text("generations", st.generations, st.generations);
    g4l.text("underruns", st.underruns, st.underruns);
    g4l.text("current-prompt", st.current_prompt);
    g4l.text("next-prompt", st.next_prompt);
    g4l.text("next-prompt-in", g4l.duration(st.next_prompt_in_s), st.next_prompt_in_s);
    g4l.text("generating-prompt", st.generating ? st.generating_prompt + " (" + st.progress + " %)" : null);
    var n = (st.prompts || []).length;
    g4l.text("rotation", n > 1 && st.rotate_every_s > 0 ? n + " prompts, each " + g4l.duration(st.rotate_every_s)
             : (n === 1 ? "one prompt" : null));
    g4l.text("model", st.model);
    g4l.text("played", g4l.duration(st.played_seconds) + " / " + g4l.duration(st.generated_seconds));
    g4l.text("created", g4l.when(st.created));
    g4l.$("recording").textContent = st.recording ? "(recording now)" : "";
    g4l.$("listen-link").href = st.page_url;
    outputs(st.outputs);
    errors(st.errors);
  }

  function history() {
    var since = samples.length ? "?since=" + samples[samples.length - 1].t : "";
    return g4l.getJSON(base + "/history.json" + since).then(function (h) {
      everyS = h.every_s;
      windowS = h.window_s;
      samples = samples.concat(h.samples);
      var cut = Date.now() / 1000 - windowS;
      while (samples.length && samples[0].t < cut) samples.shift();
    });
  }

  g4l.every(3000, function () {
    return Promise.all([g4l.getJSON(base + "/status.json").then(show), history()]).then(draw);
  });
})();
