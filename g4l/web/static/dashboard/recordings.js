/* /stations/<id>/recordings: the station's archive, refreshed every 30 s. */
(function () {
  "use strict";
  var id = g4l.stationId();
  var base = "/stations/" + encodeURIComponent(id);
  var body = document.querySelector("#recordings tbody");
  g4l.$("dashboard-link").href = base + "/dashboard";

  function row(rec) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-recording", rec.recording_id);
    g4l.cell(tr, g4l.when(rec.started_at), "start");
    g4l.cell(tr, g4l.duration(rec.duration_s), "num length").setAttribute("data-value", rec.duration_s);
    g4l.cell(tr, g4l.bytes(rec.bytes), "num size").setAttribute("data-value", rec.bytes);
    var file = g4l.cell(tr, "");
    file.textContent = "";
    var a = g4l.link(rec.url, "download");
    a.className = "download";
    a.setAttribute("download", rec.recording_id + ".m4a");
    file.appendChild(a);
    return tr;
  }

  g4l.getJSON(base + "/status.json").then(function (st) { g4l.text("name", st.name || st.station_id); });
  g4l.every(30000, function () {
    return g4l.getJSON(base + "/recordings.json").then(function (data) {
      body.replaceChildren.apply(body, data.recordings.slice().reverse().map(row));  // newest first
      g4l.$("none").hidden = data.recordings.length > 0;
    });
  });
})();
