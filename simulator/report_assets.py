"""report.html's inline style sheet and script (no network: everything is in the one file)."""
from __future__ import annotations

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI","Noto Sans CJK SC","Microsoft YaHei",sans-serif;margin:0;
color:#1d2430;background:#f6f7f9}
header{background:#16324f;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85}main{padding:18px 28px;max-width:1200px}
section{background:#fff;border:1px solid #dde2e8;border-radius:8px;padding:14px 18px;margin:0 0 18px}
h2{font-size:17px;margin:0 0 10px}table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #e6e9ee;padding:4px 8px;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}.ok{color:#17803d;font-weight:600}
.bad{color:#b42318;font-weight:600}.muted{color:#667085}.chart{width:100%;overflow-x:auto}
.legend span{display:inline-block;margin-right:14px}.legend i{display:inline-block;width:11px;height:11px;
margin-right:5px;border-radius:2px;vertical-align:-1px}ul.notes{margin:2px 0 0 0;padding-left:18px}
details summary{cursor:pointer}.kpi{display:inline-block;margin:0 28px 6px 0}.kpi b{display:block;font-size:20px}
input#filter{padding:4px 8px;width:280px;margin-bottom:8px}
"""

JS = r"""
(function(){
"use strict";
var NS="http://www.w3.org/2000/svg";
var COLORS=["#2f6db3","#56a97a","#e0a030","#8e6cc2","#d0543f","#3ab0c0","#9a7b4f","#c2477f"];
function el(tag,attrs,parent){var e=document.createElementNS(NS,tag);for(var k in attrs){e.setAttribute(k,attrs[k]);}
 if(parent){parent.appendChild(e);}return e;}
function text(parent,x,y,s,extra){var t=el("text",Object.assign({x:x,y:y,"font-size":11,fill:"#344054"},extra||{}),parent);
 t.textContent=s;return t;}
function yuan(fen){return (fen/100).toLocaleString("en-US",{minimumFractionDigits:2,maximumFractionDigits:2});}
function legend(box,keys){var d=document.createElement("div");d.className="legend";keys.forEach(function(k,i){
 var s=document.createElement("span");var c=document.createElement("i");c.style.background=COLORS[i%COLORS.length];
 s.appendChild(c);s.appendChild(document.createTextNode(k));d.appendChild(s);});box.appendChild(d);}
function stacked(box,rows){
 if(!rows.length){box.textContent="no settlements";return;}
 var keys=rows[0].parts.map(function(p){return p[0];});legend(box,keys);
 rows.forEach(function(r){var o={};r.parts.forEach(function(p){o[p[0]]=p[1];});r.parts=o;});
 var W=900,rowH=34,left=170,H=rows.length*rowH+30;
 var svg=el("svg",{viewBox:"0 0 "+W+" "+H,width:"100%",class:"chart-rendered",role:"img"},box);
 rows.forEach(function(r,i){var total=0;keys.forEach(function(k){total+=Math.max(0,r.parts[k]);});
  var y=i*rowH+8,x=left;text(svg,4,y+16,r.label);
  keys.forEach(function(k,j){var v=Math.max(0,r.parts[k]);var w=total?(W-left-110)*v/total:0;
   var rect=el("rect",{x:x,y:y,width:Math.max(0,w),height:22,fill:COLORS[j%COLORS.length]},svg);
   var t=el("title",{},rect);t.textContent=k+": "+yuan(v)+" ("+(total?(100*v/total).toFixed(1):"0")+"%)";x+=w;});
  text(svg,W-104,y+16,yuan(total));});
}
function parseT(s){var p=s.split(/[- :]/);return Date.UTC(+p[0],+p[1]-1,+p[2],+p[3],+p[4],+p[5]);}
function lines(box,series){
 if(!series.length){box.textContent="no personal accounts to follow";return;}
 legend(box,series.map(function(s){return s.name+" ("+s.members.join(", ")+")";}));
 var W=900,H=300,L=70,R=20,T=10,B=40,tmin=Infinity,tmax=-Infinity,vmax=0;
 series.forEach(function(s){s.points.forEach(function(p){var t=parseT(p[0]);tmin=Math.min(tmin,t);tmax=Math.max(tmax,t);
  vmax=Math.max(vmax,p[1]);});});
 if(tmax===tmin){tmax=tmin+1;} if(vmax===0){vmax=1;}
 var svg=el("svg",{viewBox:"0 0 "+W+" "+H,width:"100%",class:"chart-rendered",role:"img"},box);
 function X(t){return L+(W-L-R)*(t-tmin)/(tmax-tmin);} function Y(v){return T+(H-T-B)*(1-v/vmax);}
 el("line",{x1:L,y1:H-B,x2:W-R,y2:H-B,stroke:"#98a2b3"},svg);el("line",{x1:L,y1:T,x2:L,y2:H-B,stroke:"#98a2b3"},svg);
 for(var i=0;i<=4;i++){var v=vmax*i/4;text(svg,4,Y(v)+4,yuan(v));
  el("line",{x1:L,y1:Y(v),x2:W-R,y2:Y(v),stroke:"#eef0f3"},svg);}
 (window.TICKS||[]).forEach(function(tk){var x=X(parseT(tk[0]));
  el("line",{x1:x,y1:H-B,x2:x,y2:H-B+4,stroke:"#98a2b3"},svg);
  text(svg,x,H-B+16,tk[1],{"text-anchor":"middle",class:"tick"});});
 series.forEach(function(s,i){var d="",last=null;s.points.forEach(function(p){var x=X(parseT(p[0])),y=Y(p[1]);
   d+=(d?(" L"+x+" "+(last===null?y:last)+" L"):"M")+x+" "+y;last=y;});
  d+=" L"+(W-R)+" "+last;
  el("path",{d:d,fill:"none",stroke:COLORS[i%COLORS.length],"stroke-width":2},svg);
  s.points.forEach(function(p){var c=el("circle",{cx:X(parseT(p[0])),cy:Y(p[1]),r:3,fill:COLORS[i%COLORS.length]},svg);
   el("title",{},c).textContent=s.name+" "+p[0]+": "+yuan(p[1]);});});
}
function bars(box,rows){
 if(!rows.length){box.textContent="no limit was touched";return;}
 var W=900,rowH=24,left=380,H=rows.length*rowH+10;
 var svg=el("svg",{viewBox:"0 0 "+W+" "+H,width:"100%",class:"chart-rendered",role:"img"},box);
 rows.forEach(function(r,i){var y=i*rowH+4,frac=Math.min(1,r.used/r.cap),w=(W-left-150)*frac;
  text(svg,4,y+13,r.label.length>58?r.label.slice(0,57)+"…":r.label);
  el("rect",{x:left,y:y,width:W-left-150,height:16,fill:"#eef0f3"},svg);
  el("rect",{x:left,y:y,width:w,height:16,fill:frac>=1?"#d0543f":frac>0.8?"#e0a030":"#2f6db3"},svg);
  text(svg,W-146,y+13,yuan(r.used)+" / "+yuan(r.cap),{"font-size":10});
  el("title",{},svg.lastChild).textContent=(100*r.used/r.cap).toFixed(1)+"% used";});
}
function filter(){var input=document.getElementById("filter");if(!input){return;}
 input.addEventListener("input",function(){var q=input.value.toLowerCase();
  document.querySelectorAll("#why tbody tr").forEach(function(tr){tr.style.display=tr.textContent.toLowerCase().indexOf(q)>=0?"":"none";});});}
try{
 var data=JSON.parse(document.getElementById("report-data").textContent);window.TICKS=data.ticks;
 stacked(document.getElementById("chart-sources"),data.sources);
 lines(document.getElementById("chart-families"),data.families);
 bars(document.getElementById("chart-limits"),data.limits);
 filter();
 document.body.setAttribute("data-report-ready","ok");
 document.title=document.title+" ✓";
}catch(err){document.body.setAttribute("data-report-error",String(err&&err.message||err));throw err;}
})();
"""
