// The course site's explorers, without a kernel (inlined into every chapter page by tools/build_site.py).
//
// Each explorer on a page is a <div class="course-live"> holding its start picture and its views as JSON
// (<script type="application/json" class="course-views">; the format is in course_lib/widgets/views.py): the
// controls (slider, menu or toggle buttons), the precomputed options of each, and one frame per combination
// of values, naming its picture (in the folder data-base names) and its text readouts. This script builds the
// controls, and when one moves, shows the frame of the chosen values. The controls come in the order the kernel
// went through them (a prompt before its tokens): a control lists the values that have a frame with the controls
// before it as they are (a prompt's own tokens, for example). If a choice has no frame with the other values kept
// (a token index the new prompt lacks), the nearest frame with that choice is shown, the earlier controls counting
// more, as the kernel's explorer keeps what it can. Nothing is fetched but the pictures; no kernel, no network.
(function () {
  "use strict";

  function setUp(root) {
    var views = JSON.parse(root.querySelector("script.course-views").textContent);
    var base = root.getAttribute("data-base");
    var picture = root.querySelector("img.course-live-picture");
    var readouts = root.querySelectorAll(".course-live-readout");
    var box = root.querySelector(".course-live-controls");
    var SEP = "\u0001";
    var index = {}, prefixes = {};
    views.frames.forEach(function (frame, i) {
      index[frame.values.join(SEP)] = i;
      for (var c = 1; c <= frame.values.length; c++) prefixes[frame.values.slice(0, c).join(SEP)] = true;
    });
    var current = views.start;

    function find(values) {
      var i = index[values.join(SEP)];
      return i === undefined ? -1 : i;
    }

    function nearest(c, key) {  // the frame with control c at key that agrees most with the current values
      var values = views.frames[current].values, n = values.length, best = -1, bestScore = -1;
      views.frames.forEach(function (frame, j) {
        if (frame.values[c] !== key) return;
        var score = 0;
        for (var d = 0; d < n; d++) if (d !== c && frame.values[d] === values[d]) score += Math.pow(2, n - d);
        if (score > bestScore) { bestScore = score; best = j; }
      });
      return best;
    }

    function choose(c, key) {
      var values = views.frames[current].values.slice();
      values[c] = key;
      var i = find(values);
      if (i < 0) i = nearest(c, key);
      if (i >= 0 && i !== current) show(i);
    }

    function available(c) {  // [{key, label}] of control c that have a frame with the controls before it as they are
      var frame = views.frames[current], set = views.option_sets[frame.options[c]];
      var before = frame.values.slice(0, c);
      return set.keys.map(function (key, o) { return {key: key, label: set.labels[o]}; }).filter(function (option) {
        return prefixes[before.concat([option.key]).join(SEP)] === true;
      });
    }

    function show(i) {
      current = i;
      var frame = views.frames[i];
      picture.src = base + "/" + frame.picture;
      frame.texts.forEach(function (text, k) { if (readouts[k]) readouts[k].textContent = text; });
      controls.forEach(function (control, c) { control.refresh(available(c), frame.values[c]); });
      root.setAttribute("data-frame", String(i));
    }

    function labelled(name) {
      var wrap = document.createElement("label");
      wrap.className = "course-live-control";
      var span = document.createElement("span");
      span.textContent = name;
      wrap.appendChild(span);
      box.appendChild(wrap);
      return wrap;
    }

    function menu(control, c) {
      var wrap = labelled(control.name), select = document.createElement("select"), options = [];
      select.setAttribute("data-control", control.name);
      wrap.appendChild(select);
      select.addEventListener("change", function () { choose(c, options[select.selectedIndex].key); });
      return {refresh: function (list, value) {
        options = list;
        select.innerHTML = "";
        list.forEach(function (option) {
          var element = document.createElement("option");
          element.textContent = option.label;
          select.appendChild(element);
        });
        select.selectedIndex = list.findIndex(function (option) { return option.key === value; });
      }};
    }

    function toggle(control, c) {
      var wrap = labelled(control.name), group = document.createElement("span");
      group.setAttribute("role", "group");
      group.setAttribute("data-control", control.name);
      wrap.appendChild(group);
      return {refresh: function (list, value) {
        group.innerHTML = "";
        list.forEach(function (option) {
          var button = document.createElement("button");
          button.type = "button";
          button.textContent = option.label;
          button.setAttribute("aria-pressed", String(option.key === value));
          button.addEventListener("click", function () { choose(c, option.key); });
          group.appendChild(button);
        });
      }};
    }

    function slider(control, c) {
      var wrap = labelled(control.name), input = document.createElement("input"), output = document.createElement("output");
      var options = [], timer = null, play = null;
      input.type = "range";
      input.min = "0";
      input.step = "1";
      input.setAttribute("data-control", control.name);
      if (control.play) {
        play = document.createElement("button");
        play.type = "button";
        play.textContent = "\u25b6";
        play.setAttribute("aria-label", "play " + control.name);
        play.addEventListener("click", function () {
          if (timer) { clearInterval(timer); timer = null; play.textContent = "\u25b6"; return; }
          if (Number(input.value) >= options.length - 1) choose(c, options[0].key);
          play.textContent = "\u275a\u275a";
          timer = setInterval(function () {
            var next = Number(input.value) + 1;
            if (next >= options.length) { clearInterval(timer); timer = null; play.textContent = "\u25b6"; return; }
            choose(c, options[next].key);
          }, 250);
        });
        wrap.appendChild(play);
      }
      wrap.appendChild(input);
      wrap.appendChild(output);
      input.addEventListener("input", function () { choose(c, options[Number(input.value)].key); });
      return {refresh: function (list, value) {
        options = list;
        input.max = String(Math.max(0, list.length - 1));
        var i = list.findIndex(function (option) { return option.key === value; });
        input.value = String(Math.max(0, i));
        output.textContent = i >= 0 ? list[i].label : "";
        input.setAttribute("aria-valuetext", output.textContent);
      }};
    }

    var controls = views.controls.map(function (control, c) {
      return control.kind === "slider" ? slider(control, c) : control.kind === "toggle" ? toggle(control, c)
        : menu(control, c);
    });
    show(current);
  }

  function start() {
    Array.prototype.forEach.call(document.querySelectorAll(".course-live"), function (root) {
      try { setUp(root); } catch (error) { root.setAttribute("data-error", String(error)); }
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
